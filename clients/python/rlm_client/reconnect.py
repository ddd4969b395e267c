"""Picking a run back up after its stream drops (requests with detach_grace_seconds > 0).

The server keeps such a run going for its grace; the client reattaches with
WatchRun(run_id, run_token, after_seq=the last seq it saw) and goes on yielding
events as if nothing happened: none missing, none twice."""

from __future__ import annotations

import time
from typing import Any

import grpc

from rlm_service._gen.rlm.v1 import rlm_pb2

# How a dropped connection shows up: the transport's UNAVAILABLE, or a stream
# reset mid-message. A run's own failure ends with an error event first, so it
# is never mistaken for a drop.
_DROPPED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


class Resume:
    """What a reconnect needs, learned from the events as they pass."""

    def __init__(self, grace: float, timeout: float | None = None) -> None:
        self.grace = grace
        self._end = None if timeout is None else time.monotonic() + timeout
        self.run_id = ""
        self.token = ""
        self.last_seq = 0
        self.ended = False
        self._deadline = 0.0
        self.attempts = 0

    def fresh(self, event: rlm_pb2.CompletionEvent) -> bool:
        """Notes the event; False for one already yielded (never, with after_seq,
        but a replay must not be trusted to be exact)."""
        if event.seq and event.seq <= self.last_seq:
            return False
        self.last_seq = event.seq or self.last_seq
        started = event.run_started if event.HasField("run_started") else None
        if started is not None and started.depth == 0 and started.run_token:
            self.run_id, self.token = started.request_id, started.run_token
        if event.HasField("final_answer") or event.HasField("error"):
            self.ended = True
        self._deadline = 0.0
        return True

    def should_retry(self, exc: grpc.RpcError) -> bool:
        """True when ``exc`` is a drop of a run that can still be picked up."""
        # Both the sync call and grpc.aio's AioRpcError have code(); RpcError itself not.
        code_of = getattr(exc, "code", None)
        code = code_of() if callable(code_of) else None
        if self.ended or not self.token or self.grace <= 0 or code not in _DROPPED:
            return False
        now = time.monotonic()
        if not self._deadline:
            # The server's grace starts at about the same moment the stream broke.
            self._deadline = now + self.grace
        return now < self._deadline

    def time_left(self) -> float:
        return max(0.05, self._deadline - time.monotonic())

    def timeout_left(self) -> float | None:
        """The caller's own deadline for the whole run, for the WatchRun call."""
        return None if self._end is None else max(0.05, self._end - time.monotonic())

    def backoff(self) -> float:
        self.attempts += 1
        return float(min(2.0, 0.1 * 2 ** min(self.attempts, 5)))

    def can_cancel(self) -> bool:
        """The caller left a run that would otherwise live on for its grace."""
        return self.grace > 0 and bool(self.token) and not self.ended

    def ref(self) -> rlm_pb2.RunRef:
        return rlm_pb2.RunRef(run_id=self.run_id, run_token=self.token)

    def request(self) -> rlm_pb2.WatchRunRequest:
        return rlm_pb2.WatchRunRequest(run_id=self.run_id, run_token=self.token,
                                       after_seq=self.last_seq)


def grace_of(fields: dict[str, Any]) -> float:
    return float(fields.get("detach_grace_seconds") or 0.0)
