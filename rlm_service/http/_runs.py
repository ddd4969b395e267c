"""The one place the HTTP face reaches the run code: the gRPC servicer's own
validation, request-slot queue and event stream, so both faces behave the same."""

from __future__ import annotations

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.auth import current_lease
from rlm_service.run.engine import RunSpec
from rlm_service.run.types import ErrorKind, RequestFailed
from rlm_service.runs.live import Attachment
from rlm_service.servicer import SHUTTING_DOWN, RLMServicer, build_spec


class ShuttingDown(RequestFailed):
    """The server refuses new requests (graceful shutdown)."""

    def __init__(self) -> None:
        super().__init__(ErrorKind.SHUTTING_DOWN, SHUTTING_DOWN)


def spec_for(servicer: RLMServicer, request: rlm_pb2.CompletionRequest) -> RunSpec:
    """Raises servicer.InvalidRequest for bad input, ShuttingDown while draining,
    RequestFailed for an unknown, foreign or busy session."""
    if not servicer.accepting:
        raise ShuttingDown()
    spec = build_spec(request, servicer.settings, None, servicer.contexts, servicer.sessions,
                      servicer.engine.services.tools)
    servicer.slots.check(spec.received + spec.limits.timeout_seconds)
    return spec


def run_events(servicer: RLMServicer, spec: RunSpec) -> Attachment:
    """``async with run_events(...) as events``: the request's events; leaving the
    block early cancels the request at once. ``.failure`` tells why it failed."""
    lease = current_lease.get()  # edge: books the request's cost to its API key
    return servicer.stream(spec, observe=None if lease is None else lease.observe)
