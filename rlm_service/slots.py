"""The run-slot queue, with backpressure that says so.

At most ``capacity`` requests run at once; the rest wait in line. A request is
refused at once (Overloaded: RESOURCE_EXHAUSTED / HTTP 429 with a retry hint) when
the line is full, or when its expected wait would pass its deadline, instead of
waiting only to time out. The expected wait is the line ahead of it divided among
the slots, at the recent mean run time."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rlm_service.run.types import ErrorKind, RequestFailed
from rlm_service.telemetry import metrics

# Until a run has finished, waits are not estimated (no request is refused for its
# deadline, only for a full line).
_SMOOTHING = 0.2


class Overloaded(RequestFailed):
    """No run slot soon enough; ``retry_after`` seconds is when one may be free."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(ErrorKind.OVERLOADED, message)
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1, as HTTP's Retry-After and our gRPC trailer carry it."""
        return str(max(1, math.ceil(self.retry_after)))


class RunSlots:
    def __init__(self, capacity: int, max_queue: int) -> None:
        self.capacity = capacity
        self.max_queue = max_queue
        self.running = 0
        self.waiting = 0
        self.mean_run_seconds: float | None = None
        self._free = asyncio.Semaphore(capacity)

    def expected_wait(self) -> float:
        """Seconds a request arriving now would wait for a slot (0 if one is free)."""
        if self.running + self.waiting < self.capacity:
            return 0.0
        if self.mean_run_seconds is None:
            return 0.0
        ahead = self.waiting + 1
        return math.ceil(ahead / self.capacity) * self.mean_run_seconds

    def check(self, deadline: float | None) -> None:
        """Raises Overloaded if a request with this deadline (time.monotonic()) should be
        refused now."""
        if self.running + self.waiting < self.capacity:
            return
        wait = self.expected_wait()
        hint = wait or (self.mean_run_seconds or 1.0)
        if self.waiting >= self.max_queue:
            self._refuse("queue_full")
            raise Overloaded(f"the server is at capacity: {self.running} runs are running and "
                             f"{self.waiting} waiting (the most it queues); retry in about "
                             f"{math.ceil(hint)} s or on another instance", hint)
        if deadline is not None and time.monotonic() + wait > deadline:
            self._refuse("deadline")
            left = max(0.0, deadline - time.monotonic())
            raise Overloaded(f"the server is busy: a run slot is expected in about {wait:.0f} s, "
                             f"after this request's deadline ({left:.1f} s left); retry later "
                             "or with a longer timeout", hint)

    @asynccontextmanager
    async def hold(self, deadline: float | None) -> AsyncIterator[None]:
        """Holds a run slot for the block, after waiting in line; raises Overloaded."""
        self.check(deadline)
        self.waiting += 1
        metrics.rlm_run_queue_depth.set(self.waiting)
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
            metrics.rlm_run_queue_depth.set(self.waiting)
        self.running += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self.running -= 1
            self._free.release()
            took = time.monotonic() - started
            self.mean_run_seconds = took if self.mean_run_seconds is None else (
                (1 - _SMOOTHING) * self.mean_run_seconds + _SMOOTHING * took)

    @staticmethod
    def _refuse(reason: str) -> None:
        metrics.rlm_run_rejections.labels(reason=reason).inc()
