"""A REPL's own door to the LLMQuery callback, with a cap on its connections.

All REPLs share one callback server, where a connection cannot be traced back to
the REPL that opened it, and one REPL once opened 13,600 of them (64 processes x
256 fds), so the server ran out of fds and unrelated runs failed. Each REPL
therefore gets a socket of its own in its run dir (the only callback socket its
sandbox sees); the host relays its connections to the shared server, at most
``MAX_CONNECTIONS`` at a time. One past the cap is closed at once: the model's
code sees its call fail with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
_CHUNK = 1 << 16


class CallbackProxy:
    def __init__(self, upstream: Path, path: Path, max_connections: int = MAX_CONNECTIONS) -> None:
        self.upstream = upstream
        self.path = path
        self.max_connections = max_connections
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        # The sandbox's uid must be able to connect.
        os.chmod(self.path, 0o666)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= self.max_connections or self._closing:
            self.refused += 1
            writer.close()
            return
        self._tasks.add(task)
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
            self._writers.add(up_writer)
            if not self._closing:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except OSError:
            pass  # the shared server is gone: the service is stopping
        finally:
            self._tasks.discard(task)
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    async def close(self) -> None:
        # Closing the connections ends their relays; cancelling the handler tasks
        # instead makes asyncio's stream server log each as an error (Python 3.11).
        self._closing = True
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
        with contextlib.suppress(OSError):
            self.path.unlink()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
