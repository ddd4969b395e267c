"""Starting a REPL's process so that a cancel landing at any instant leaks nothing.

A run's client may cancel while its REPL starts; the pool may close meanwhile. Every
step here undoes what the steps before it did, and the one step that cannot be
interrupted safely (CPython gh-103847) is shielded and undone once it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from pathlib import Path

from rlm_service.repl.proxy import CallbackProxy
from rlm_service.repl.sandbox import Launch, Sandbox
from rlm_service.repl_guest import protocol


async def spawn_guest(sandbox: Sandbox, run_dir: Path, proxy: CallbackProxy,
                      ) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader,
                                 asyncio.StreamWriter]:
    """The started guest process and its control channel (reader, writer)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    launch: Launch | None = None
    try:
        await proxy.start()
        launch = sandbox.launch(run_dir, child.fileno(), sandbox.next_uid())
        spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
            *launch.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=launch.env, **launch.popen_kwargs))
    except BaseException:
        for closing in (child.close, parent.close, *([launch.close] if launch else [])):
            closing()
        await _discard(sandbox, run_dir, proxy)
        raise
    # The child's fds stay open until the spawn is over, so no fd number it was
    # told to keep can be reused by something else in the meantime.
    def spawned(_: object, launch: Launch = launch) -> None:
        child.close()
        launch.close()

    spawn.add_done_callback(spawned)
    try:
        # Shielded: cancelling create_subprocess_exec while it connects the pipes can
        # leave it waiting forever (CPython gh-103847), holding the run dir and fds.
        proc = await asyncio.shield(spawn)
    except BaseException:
        parent.close()
        spawn.add_done_callback(lambda t: _undo_spawn(t, sandbox, run_dir, proxy))
        raise
    try:
        reader, writer = await asyncio.open_unix_connection(
            sock=parent, limit=protocol.MAX_FRAME + 16)
    except BaseException:
        # Cancelled here (a pool closing), nothing else owns the process yet.
        parent.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        await _discard(sandbox, run_dir, proxy)
        raise
    return proc, reader, writer


async def _discard(sandbox: Sandbox, run_dir: Path, proxy: CallbackProxy) -> None:
    """Removes what a REPL that never started had: its socket relay, cgroups and files."""
    await asyncio.shield(proxy.close())
    sandbox.release(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)


_UNDOING: set[asyncio.Task[None]] = set()


def _undo_spawn(spawn: asyncio.Future[asyncio.subprocess.Process], sandbox: Sandbox,
                run_dir: Path, proxy: CallbackProxy) -> None:
    """Kills and reaps a REPL whose start was abandoned, once its spawn is over."""
    async def undo() -> None:
        if not spawn.cancelled() and spawn.exception() is None:
            proc = spawn.result()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        await _discard(sandbox, run_dir, proxy)

    task = asyncio.ensure_future(undo())
    _UNDOING.add(task)
    task.add_done_callback(_UNDOING.discard)


