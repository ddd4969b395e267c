"""What a REPL writes straight to fds 1 and 2 (os.write, child processes).

The host reads each pipe only up to the block's cap, then stops reading until the
next block: a writer past the cap blocks on the full pipe instead of costing the
service CPU to read and discard (``yes`` would otherwise keep a core busy).
"""

from __future__ import annotations

import asyncio
import contextlib


class Drain:
    """Reads a pipe, keeping at most ``limit`` bytes per block."""

    def __init__(self, stream: asyncio.StreamReader, limit: int) -> None:
        self._buf = bytearray()
        self._limit = limit
        self._room = asyncio.Event()
        self._room.set()
        self.task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while True:
                await self._room.wait()
                chunk = await stream.read(max(1, self._limit - len(self._buf)))
                if not chunk:
                    return
                if self._limit < 1 << 62:
                    self._buf += chunk
                if len(self._buf) >= self._limit:
                    self._room.clear()

    def discard(self) -> None:
        """From now on reads everything and keeps nothing."""
        self._limit = 1 << 62
        self._buf.clear()
        self._room.set()

    def take(self) -> tuple[str, bool]:
        """(what was read since the last take, whether reading stopped at the cap)."""
        data, full = bytes(self._buf), not self._room.is_set()
        self._buf.clear()
        self._room.set()
        return data.decode(errors="replace"), full


def clip(text: str, total: int, limit: int, unread: bool = False) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters, with a note saying so."""
    if total <= limit and len(text) <= limit and not unread:
        return text, False
    kept = text[:limit]
    if unread:
        note = (f"\n... [output cut: showing {len(kept):,} characters; more was written "
                "to stdout/stderr and not read]")
    else:
        note = f"\n... [output cut: showing {len(kept):,} of {max(total, len(text)):,} characters]"
    return kept + note, True


async def stop(*drains: Drain) -> None:
    """Ends the drains of a killed process: they read to EOF (a paused pipe would never
    see it, and its transport would outlive the loop), briefly, then are cancelled."""
    for drain in drains:
        drain.discard()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(d.task for d in drains),
                                              return_exceptions=True), 1.0)
    for drain in drains:
        drain.task.cancel()
    await asyncio.gather(*(d.task for d in drains), return_exceptions=True)
