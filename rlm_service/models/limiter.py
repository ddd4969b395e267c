"""The process-wide cap on model calls in flight, shared fairly between requests.

A plain semaphore serves waiters in arrival order, so one request's 5,000-prompt
batch queues 5,000 waiters ahead of every other request's next call. This limiter
keeps one queue per request and hands each freed slot to the next request in turn
(round robin), so a request alone uses the whole width and requests together share it.

Round robin alone still makes a newcomer wait for a busy request's calls to end: a
request that holds every slot releases them only as its calls finish. So the last
``reserve`` slots are kept for requests holding fewer than ``reserve``: a small run's
sequential calls start at once next to a wide batch, at the cost of a lone batch
running ``reserve`` narrower than the cap.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from typing import Protocol

# Which request a model call belongs to; set by the run code around each call.
# Calls made outside any request share the "" key.
request_key: contextvars.ContextVar[str] = contextvars.ContextVar("rlm_request_key", default="")


class Limiter(Protocol):
    """What the backends need of a limiter (asyncio.Semaphore has it too)."""

    async def acquire(self) -> bool: ...

    def release(self) -> None: ...


class FairLimiter:
    """At most ``capacity`` holders; freed slots go round robin across requests."""

    def __init__(self, capacity: int, reserve: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        # Never all of it: a capacity of 1 still serves someone.
        self.reserve = max(0, min(reserve, capacity - 1))
        self.in_use = 0
        self._held: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self._turns: deque[str] = deque()  # keys with waiters, next to serve first

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiters.values())

    def held_by(self, key: str) -> int:
        return self._held.get(key, 0)

    def _may_take(self, key: str) -> bool:
        free = self.capacity - self.in_use
        if free <= 0:
            return False
        return free > self.reserve or self._held.get(key, 0) < self.reserve

    def _take(self, key: str) -> None:
        self.in_use += 1
        self._held[key] = self._held.get(key, 0) + 1

    async def acquire(self) -> bool:
        key = request_key.get()
        if key not in self._waiters and self._may_take(key):
            self._take(key)
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiters.get(key)
        if queue is None:
            queue = self._waiters[key] = deque()
            self._turns.append(key)
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted in the same moment it was cancelled: hand the slot on.
                self.release_for(key)
            else:
                self._forget(key, future)
            raise
        return True

    def release(self) -> None:
        """Gives back a slot of the current request (acquire and release run in the
        same task, so they see the same key)."""
        self.release_for(request_key.get())

    def release_for(self, key: str) -> None:
        held = self._held.get(key, 0)
        if held <= 0:
            raise ValueError(f"release() without a slot held for request {key!r}")
        if held == 1:
            del self._held[key]
        else:
            self._held[key] = held - 1
        self.in_use -= 1
        self._grant()

    def _forget(self, key: str, future: asyncio.Future[None]) -> None:
        queue = self._waiters.get(key)
        if queue is None:
            return
        try:
            queue.remove(future)
        except ValueError:
            return
        if not queue:
            del self._waiters[key]
            self._turns.remove(key)
        # A waiter that left may have been what kept a free slot from the others.
        self._grant()

    def _grant(self) -> None:
        """Gives free slots to waiting requests, one each in turn."""
        passed = 0
        while self._turns and passed < len(self._turns) and self.in_use < self.capacity:
            key = self._turns[0]
            self._turns.rotate(-1)
            if not self._may_take(key):
                passed += 1
                continue
            queue = self._waiters[key]
            future = queue.popleft()
            if not queue:
                del self._waiters[key]
                self._turns.remove(key)
            if future.done():
                continue  # cancelled, its waiter has not run yet
            self._take(key)
            future.set_result(None)
            passed = 0
