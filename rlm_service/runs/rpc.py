"""The gRPC face of run control: WatchRun, CancelRun and GetRun."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.errors import status_of
from rlm_service.run.types import RequestFailed
from rlm_service.runs.registry import LiveRun, RunRegistry, RunState

Context = grpc.aio.ServicerContext[Any, Any]

_STATES: dict[RunState, rlm_pb2.RunState.ValueType] = {
    RunState.RUNNING: rlm_pb2.RUN_STATE_RUNNING,
    RunState.DETACHED: rlm_pb2.RUN_STATE_DETACHED,
    RunState.ANSWERED: rlm_pb2.RUN_STATE_ANSWERED,
    RunState.FAILED: rlm_pb2.RUN_STATE_FAILED,
    RunState.CANCELLED: rlm_pb2.RUN_STATE_CANCELLED,
}


def run_info(runs: RunRegistry, live: LiveRun) -> rlm_pb2.RunInfo:
    return rlm_pb2.RunInfo(
        run_id=live.run_id, state=_STATES[live.state], last_seq=live.last_seq,
        usage=runs.usage(live), watchers=live.watchers,
        grace_left_seconds=round(live.grace_left(), 3),
        first_buffered_seq=live.first_buffered_seq)


async def _abort(context: Context, failure: RequestFailed) -> None:
    await context.abort(status_of(failure).grpc, failure.message)


class RunControl:
    """Mixed into the RLMServicer: the run-control RPCs over its RunRegistry."""

    runs: RunRegistry

    async def _find(self, run_id: str, token: str, context: Context) -> LiveRun:
        try:
            return self.runs.get(run_id, token)
        except RequestFailed as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc

    async def WatchRun(self, request: rlm_pb2.WatchRunRequest,
                       context: Context) -> AsyncIterator[rlm_pb2.CompletionEvent]:
        live = await self._find(request.run_id, request.run_token, context)
        try:
            attachment = live.attach(request.after_seq)
        except RequestFailed as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc
        async with attachment as events:
            async for event in events:
                yield event
        if attachment.failure is not None:
            await _abort(context, attachment.failure)

    async def CancelRun(self, request: rlm_pb2.RunRef, context: Context) -> rlm_pb2.RunInfo:
        live = await self._find(request.run_id, request.run_token, context)
        live.cancel("cancelled by CancelRun")
        await live.wait()
        return run_info(self.runs, live)

    async def GetRun(self, request: rlm_pb2.RunRef, context: Context) -> rlm_pb2.RunInfo:
        live = await self._find(request.run_id, request.run_token, context)
        return run_info(self.runs, live)
