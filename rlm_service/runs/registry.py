"""Every live (and recently finished) run of this instance, by run id.

The run id is the request id; the run token, a random secret handed only to the
caller that started the run (in its RunStarted event), is what WatchRun, CancelRun
and GetRun check, so knowing a run id is not enough to read or stop the run."""

from __future__ import annotations

import asyncio
import hmac
import secrets

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.config import Settings
from rlm_service.event_sink import usage as wire_usage
from rlm_service.run.engine import Engine
from rlm_service.run.types import ErrorKind, RequestFailed
from rlm_service.runs.live import LiveRun, RunState
from rlm_service.streaming import RequestStream

__all__ = ["LiveRun", "RunRegistry", "RunState"]


class RunRegistry:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._runs: dict[str, LiveRun] = {}

    def start(self, stream: RequestStream) -> LiveRun:
        """Starts the request now; attach to it for its events."""
        live = LiveRun(stream, secrets.token_urlsafe(24),
                       grace=stream.spec.detach_grace_seconds,
                       buffer_events=self.settings.run_replay_events,
                       buffer_bytes=self.settings.run_replay_max_mb << 20, on_done=self._done)
        self._runs[live.run_id] = live
        return live

    def get(self, run_id: str, token: str) -> LiveRun:
        """The run, if ``token`` is its token; RequestFailed otherwise."""
        live = self._runs.get(run_id)
        if live is None:
            raise RequestFailed(
                ErrorKind.RUN_NOT_FOUND,
                f"no run {run_id[:64]!r} on this instance: it never existed, finished more "
                f"than {self.settings.run_retention_seconds:g} s ago, or ran on another "
                "instance")
        if not hmac.compare_digest(live.token.encode(), token.encode()):
            raise RequestFailed(ErrorKind.RUN_ACCESS_DENIED,
                                "run_token does not match: only the caller that started a "
                                "run may watch, cancel or inspect it")
        return live

    def usage(self, live: LiveRun) -> rlm_pb2.Usage:
        """The run's usage so far, all depths."""
        if live.total_usage is not None:
            return live.total_usage
        for req in self.engine.active:
            if req.spec.request_id == live.run_id:
                return wire_usage(req.ledger.total)
        return rlm_pb2.Usage()

    def _done(self, live: LiveRun) -> None:
        # A detachable run is kept a while so a client that reconnects late still
        # gets the ending; any other run's stream already delivered everything.
        def forget() -> None:
            if self._runs.get(live.run_id) is live:
                del self._runs[live.run_id]
        if live.grace > 0 and self.settings.run_retention_seconds > 0:
            asyncio.get_running_loop().call_later(self.settings.run_retention_seconds, forget)
        else:
            forget()
