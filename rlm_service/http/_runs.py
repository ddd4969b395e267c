"""The one place the HTTP face reaches the run code: the gRPC servicer's own
validation, run-slot queue and event stream, so both faces behave the same."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.auth import current_lease
from rlm_service.run.engine import RunSpec
from rlm_service.servicer import RLMServicer, build_spec
from rlm_service.streaming import stream_events


class ShuttingDown(Exception):
    """The server refuses new runs (graceful shutdown)."""


def spec_for(servicer: RLMServicer, request: rlm_pb2.CompletionRequest) -> RunSpec:
    """Raises servicer.InvalidRequest for bad input, ShuttingDown while draining."""
    if not servicer.accepting:
        raise ShuttingDown("the server is shutting down; retry on another instance")
    return build_spec(request, servicer.settings, None)


@contextlib.asynccontextmanager
async def run_events(servicer: RLMServicer,
                     spec: RunSpec) -> AsyncIterator[AsyncIterator[rlm_pb2.CompletionEvent]]:
    """The run's events; leaving the block early cancels the run at once."""
    async with contextlib.aclosing(
            stream_events(servicer.engine, servicer.settings, servicer.slots, spec)) as events:
        lease = current_lease.get()  # edge: books the run's cost to its API key
        yield events if lease is None else lease.watch(events)
