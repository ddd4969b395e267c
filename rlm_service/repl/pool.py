"""Pre-started sandboxed REPLs, so a run does not wait for an interpreter.

The pool adapts to demand. It keeps at least ``size`` idle REPLs, and more when runs
arrive faster: enough to cover the arrivals expected while a replacement starts, up to
``max_size``. REPLs idle for longer than ``idle_seconds`` beyond ``size`` are closed.
Each REPL still serves exactly one run and then dies; nothing is shared between runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from typing import Literal

from rlm_service.repl.process import ReplProcess
from rlm_service.repl.sandbox import Sandbox

log = logging.getLogger(__name__)

# How far back arrivals count towards the rate, and the start time assumed until one
# has been measured.
RATE_WINDOW_SECONDS = 10.0
DEFAULT_START_SECONDS = 0.2


class ReplPool:
    """Keeps idle REPLs ready. Each REPL serves one run, then dies."""

    def __init__(self, sandbox: Sandbox, size: int, max_size: int | None = None,
                 idle_seconds: float = 30.0) -> None:
        self.sandbox = sandbox
        self.size = size
        self.max_size = max(size, size if max_size is None else max_size)
        self.idle_seconds = idle_seconds
        self._idle: list[ReplProcess] = []  # oldest first
        self._idle_since: dict[ReplProcess, float] = {}
        self._live: set[ReplProcess] = set()
        self._refills: set[asyncio.Task[None]] = set()
        self._arrivals: deque[float] = deque()
        self._start_seconds = DEFAULT_START_SECONDS
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return len(self._live) - len(self._idle)

    @property
    def target(self) -> int:
        """Idle REPLs wanted now: the arrivals expected while one starts, plus a spare."""
        now = time.monotonic()
        # Arrivals older than the idle timeout no longer hold REPLs back from closing.
        window = min(RATE_WINDOW_SECONDS, self.idle_seconds)
        while self._arrivals and now - self._arrivals[0] >= window:
            self._arrivals.popleft()  # oldest first: pruning is O(expired), not O(all)
        rate = len(self._arrivals) / window
        wanted = math.ceil(rate * self._start_seconds) + (1 if self._arrivals else 0)
        return min(self.max_size, max(self.size, wanted))

    def pids(self, which: Literal["idle", "busy", "all"] = "all") -> set[int]:
        """Host pids of the pool's REPL processes (their bwrap or interpreter): waiting,
        serving a run, or both."""
        idle = {id(r) for r in self._idle}
        return {r.proc.pid for r in self._live
                if which == "all" or (id(r) in idle) == (which == "idle")}

    async def start(self) -> None:
        await asyncio.gather(*(self._add_idle() for _ in range(self.size)))

    async def _spawn(self) -> ReplProcess:
        started = time.monotonic()
        repl = await ReplProcess.start(self.sandbox)
        # A moving average: start times vary with load, which is what matters here.
        self._start_seconds = 0.8 * self._start_seconds + 0.2 * (time.monotonic() - started)
        if self._closed:
            # close() has already swept: a REPL finished after it would outlive the
            # pool and keep the sandbox's cgroups from being removed.
            await repl.close()
            raise RuntimeError("the REPL pool is closed")
        self._live.add(repl)
        return repl

    async def _add_idle(self) -> None:
        try:
            repl = await self._spawn()
        except Exception:
            if not self._closed:
                log.exception("could not pre-start a REPL")
            return
        self._idle.append(repl)
        self._idle_since[repl] = time.monotonic()

    def _refill(self) -> None:
        if self._closed:
            return
        missing = self.target - len(self._idle) - len(self._refills)
        for _ in range(max(0, missing)):
            task = asyncio.create_task(self._add_idle())
            self._refills.add(task)
            task.add_done_callback(self._refills.discard)

    async def acquire(self) -> ReplProcess:
        if self._closed:
            raise RuntimeError("the REPL pool is closed")
        self._arrivals.append(time.monotonic())
        while self._idle:
            repl = self._idle.pop()  # the newest: the oldest are the first to retire
            self._idle_since.pop(repl, None)
            if repl.proc.returncode is None:
                self._refill()
                return repl
            await self.release(repl)
        self._refill()
        return await self._spawn()

    async def release(self, repl: ReplProcess) -> None:
        self._live.discard(repl)
        await repl.close()

    async def maintain(self) -> None:
        """Closes REPLs idle too long beyond ``size``, and tops up to the target."""
        now = time.monotonic()
        keep = max(self.size, self.target)
        while len(self._idle) > keep and now - self._idle_since[self._idle[0]] > self.idle_seconds:
            repl = self._idle.pop(0)
            self._idle_since.pop(repl, None)
            await self.release(repl)
        self._refill()

    async def close(self) -> None:
        """Kills every REPL this pool started, idle or busy."""
        self._closed = True
        for task in list(self._refills):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._refills, return_exceptions=True)
        live = list(self._live)
        self._idle.clear()
        self._idle_since.clear()
        self._live.clear()
        await asyncio.gather(*(r.close() for r in live), return_exceptions=True)
