"""One request's event stream, decoupled from the connections that watch it.

A pump task drains the request's RequestStream into a bounded replay buffer and
fans each event out to the attached watchers. When the last watcher goes away the
run is cancelled at once (detach grace 0, the default) or after its grace; a
watcher that attaches in time (WatchRun) stops the clock."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.event_sink import error_event
from rlm_service.run.types import ErrorKind, RequestFailed
from rlm_service.streaming import RequestStream

log = logging.getLogger(__name__)


class RunState(enum.Enum):
    RUNNING = "running"
    DETACHED = "detached"
    ANSWERED = "answered"
    FAILED = "failed"
    CANCELLED = "cancelled"


class LiveRun:
    """A running (or recently finished) request that watchers attach to by seq."""

    def __init__(self, stream: RequestStream, token: str, *, grace: float,
                 buffer_events: int, buffer_bytes: int,
                 on_done: Callable[[LiveRun], None]) -> None:
        self.run_id = stream.spec.request_id
        self.token = token
        self.grace = grace
        self.state = RunState.RUNNING
        self.failure: RequestFailed | None = None
        self.last_seq = 0
        self.total_usage: rlm_pb2.Usage | None = None
        # A run that dies with its stream needs no replay: nothing is kept for it.
        self._buffer: deque[rlm_pb2.CompletionEvent] = deque(
            maxlen=buffer_events if grace > 0 else 0)
        self._buffer_bytes = buffer_bytes
        self._buffered = 0
        self._watchers: set[asyncio.Queue[rlm_pb2.CompletionEvent | None]] = set()
        self._expires_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._cancel_reason = ""
        self._on_done = on_done
        self._stream = stream
        self._pump = asyncio.create_task(self._run(), name=f"run-{self.run_id[:8]}")

    @property
    def done(self) -> bool:
        return self._pump.done()

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    @property
    def first_buffered_seq(self) -> int:
        return self._buffer[0].seq if self._buffer else self.last_seq + 1

    def grace_left(self) -> float:
        if self._expires_at is None:
            return 0.0
        return max(0.0, self._expires_at - time.monotonic())

    def attach(self, after_seq: int) -> Attachment:
        """A watcher of the events with seq > ``after_seq``; raises RequestFailed
        (RUN_REPLAY_GONE) when some of them have left the buffer."""
        if after_seq + 1 < self.first_buffered_seq:
            raise RequestFailed(
                ErrorKind.RUN_REPLAY_GONE,
                f"events after seq {after_seq} are no longer buffered; the oldest kept is "
                f"seq {self.first_buffered_seq}")
        queue: asyncio.Queue[rlm_pb2.CompletionEvent | None] = asyncio.Queue()
        # No await between the snapshot and the subscription: no event is missed
        # or sent twice.
        for event in self._buffer:
            if event.seq > after_seq:
                queue.put_nowait(event)
        if self.done:
            queue.put_nowait(None)
        else:
            self._watchers.add(queue)
            self._attached()
        return Attachment(self, queue)

    def cancel(self, reason: str) -> None:
        """Stops the run; its watchers get a CANCELLED error event."""
        if not self.done:
            self._cancel_reason = reason
            self._pump.cancel()

    async def wait(self) -> None:
        with contextlib.suppress(BaseException):
            await self._pump

    # --- watchers ----------------------------------------------------------------
    def _attached(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            log.info("run reattached", extra={"request_id": self.run_id})
        self._expires_at = None
        self.state = RunState.RUNNING

    def release(self, queue: asyncio.Queue[rlm_pb2.CompletionEvent | None]) -> bool:
        """A watcher left; True when that cancelled the run (no grace)."""
        if queue not in self._watchers:
            return False
        self._watchers.discard(queue)
        if self.done or self._watchers:
            return False
        if self.grace <= 0:
            self.cancel("cancelled by client")
            return True
        self.state = RunState.DETACHED
        self._expires_at = time.monotonic() + self.grace
        self._timer = asyncio.get_running_loop().call_later(self.grace, self._expire)
        log.info("run detached; it goes on for %.1f s", self.grace,
                 extra={"request_id": self.run_id})
        return False

    def _expire(self) -> None:
        self._timer = None
        log.info("detach grace expired; cancelling the run", extra={"request_id": self.run_id})
        self.cancel(f"no client reattached within detach_grace_seconds={self.grace:g}")

    # --- the pump ----------------------------------------------------------------
    def _push(self, event: rlm_pb2.CompletionEvent | None) -> None:
        if event is not None:
            self.last_seq = event.seq
            self._keep(event)
        for queue in self._watchers:
            queue.put_nowait(event)

    def _keep(self, event: rlm_pb2.CompletionEvent) -> None:
        """Buffers the event for replay, dropping the oldest past the count or size cap."""
        maxlen = self._buffer.maxlen or 0
        if maxlen == 0:
            return
        if len(self._buffer) == maxlen:
            self._buffered -= self._buffer[0].ByteSize()
        self._buffer.append(event)
        self._buffered += event.ByteSize()
        while self._buffered > self._buffer_bytes and len(self._buffer) > 1:
            self._buffered -= self._buffer.popleft().ByteSize()

    async def _run(self) -> None:
        try:
            async with self._stream as events:
                async for event in events:
                    if event.HasField("run_started") and event.run_started.depth == 0:
                        event.run_started.run_token = self.token
                    elif event.HasField("final_answer"):
                        self.total_usage = event.final_answer.total_usage
                    self._push(event)
            self.failure = self._stream.failure
            self.state = RunState.FAILED if self.failure else RunState.ANSWERED
        except asyncio.CancelledError:
            self.state = RunState.CANCELLED
            self.failure = RequestFailed(ErrorKind.RUN_CANCELLED,
                                         self._cancel_reason or "the run was cancelled")
            self._push(error_event(self.failure, self.last_seq + 1))
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._expires_at = None
            self._push(None)
            self._watchers.clear()
            self._on_done(self)


class Attachment:
    """``async with live.attach(seq) as events``: leaving the block early detaches
    (and with no grace cancels the run, waiting for it to stop). ``failure`` says
    why the run failed once the events have ended."""

    def __init__(self, live: LiveRun,
                 queue: asyncio.Queue[rlm_pb2.CompletionEvent | None]) -> None:
        self.live = live
        self._queue = queue
        self._events: AsyncGenerator[rlm_pb2.CompletionEvent, None] | None = None

    @property
    def failure(self) -> RequestFailed | None:
        return self.live.failure

    async def __aenter__(self) -> AsyncGenerator[rlm_pb2.CompletionEvent, None]:
        self._events = self._iterate()
        return self._events

    async def __aexit__(self, *exc_info: object) -> None:
        # Released before any await: a second cancel of the handler landing in the awaits
        # below must not leave the run going on with no watcher and no grace.
        cancelled = self.live.release(self._queue)
        if self._events is not None:
            await self._events.aclose()
        if cancelled:
            # As before detaching existed: the handler ends only once the run has.
            await self.live.wait()

    async def _iterate(self) -> AsyncGenerator[rlm_pb2.CompletionEvent, None]:
        while (event := await self._queue.get()) is not None:
            yield event
