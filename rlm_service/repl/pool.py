"""Pre-started sandboxed REPLs, so a run does not wait for an interpreter."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rlm_service.repl.process import ReplProcess
from rlm_service.repl.sandbox import Sandbox

log = logging.getLogger(__name__)


class ReplPool:
    """Keeps ``size`` idle REPLs ready. Each REPL serves one run, then dies."""

    def __init__(self, sandbox: Sandbox, size: int) -> None:
        self.sandbox = sandbox
        self.size = size
        self._idle: list[ReplProcess] = []
        self._live: set[ReplProcess] = set()
        self._refills: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return len(self._live) - len(self._idle)

    async def start(self) -> None:
        await asyncio.gather(*(self._add_idle() for _ in range(self.size)))

    async def _spawn(self) -> ReplProcess:
        repl = await ReplProcess.start(self.sandbox)
        self._live.add(repl)
        return repl

    async def _add_idle(self) -> None:
        try:
            repl = await self._spawn()
        except Exception:
            log.exception("could not pre-start a REPL")
            return
        if self._closed:
            await self.release(repl)
        else:
            self._idle.append(repl)

    def _refill(self) -> None:
        if self._closed:
            return
        missing = self.size - len(self._idle) - len(self._refills)
        for _ in range(max(0, missing)):
            task = asyncio.create_task(self._add_idle())
            self._refills.add(task)
            task.add_done_callback(self._refills.discard)

    async def acquire(self) -> ReplProcess:
        if self._closed:
            raise RuntimeError("the REPL pool is closed")
        while self._idle:
            repl = self._idle.pop()
            if repl.proc.returncode is None:
                self._refill()
                return repl
            await self.release(repl)
        repl = await self._spawn()
        self._refill()
        return repl

    async def release(self, repl: ReplProcess) -> None:
        self._live.discard(repl)
        await repl.close()

    async def close(self) -> None:
        """Kills every REPL this pool started, idle or busy."""
        self._closed = True
        for task in list(self._refills):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._refills, return_exceptions=True)
        live = list(self._live)
        self._idle.clear()
        self._live.clear()
        await asyncio.gather(*(r.close() for r in live), return_exceptions=True)
