"""Host side of one sandboxed REPL process.

The guest is untrusted: its frames are checked field by field (``control``), its
fd output is read only up to the cap (``output``), its tmpfs is watched for files
(``tmpfs``). Whatever it does, ``execute`` and ``get_var`` return a result; a REPL
that broke the protocol or died is closed and reported as crashed, so the run
goes on with a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rlm_service.repl import output, tmpfs
from rlm_service.repl.control import Control, ReplError
from rlm_service.repl.proxy import CallbackProxy
from rlm_service.repl.sandbox import CALLBACK_SOCKET_NAME, Sandbox
from rlm_service.repl.spawn import spawn_guest
from rlm_service.repl_guest import protocol
from rlm_service.tools import NO_TOOLS, ToolGrant
from rlm_service.uploads.file import ContextFile

log = logging.getLogger(__name__)
__all__ = ["ExecResult", "ReplError", "ReplProcess"]
# How long past its own limit a block may take before the process is killed:
# the guest interrupts the block itself first, this catches code that ignores it.
HARD_KILL_GRACE = 2.0
START_TIMEOUT = 30.0
R = TypeVar("R", protocol.Ack, protocol.ExecReply, protocol.VarReply)


@dataclass
class ExecResult:
    stdout: str = ""
    stderr: str = ""
    error: bool = False
    timed_out: bool = False
    truncated: bool = False
    final: str | None = None
    partial: str = ""
    variables: list[str] = field(default_factory=list)
    duration: float = 0.0
    crashed: bool = False


class ReplProcess:
    """One sandboxed interpreter. Serves exactly one run, then is destroyed."""

    def __init__(self, sandbox: Sandbox, proc: asyncio.subprocess.Process, run_dir: Path,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 proxy: CallbackProxy) -> None:
        self.sandbox = sandbox
        self.proc = proc
        self.run_dir = run_dir
        self.proxy = proxy
        self._control = Control(reader, writer)
        limit = sandbox.settings.max_output_chars * 4
        assert proc.stdout is not None and proc.stderr is not None
        self._out = output.Drain(proc.stdout, limit)
        self._err = output.Drain(proc.stderr, limit)
        self._lock = asyncio.Lock()
        self._max_tmp_files = sandbox.settings.sandbox_tmp_files
        self.closed = False
        self._closing: asyncio.Future[None] | None = None
        # Called with ``answer["content"]`` whenever the running block changes it.
        self.on_partial: Callable[[str], None] | None = None

    @classmethod
    async def start(cls, sandbox: Sandbox) -> ReplProcess:
        run_dir = sandbox.runtime_dir / "runs" / secrets.token_hex(8)
        run_dir.mkdir(parents=True, mode=0o755)
        os.chmod(run_dir, 0o755)
        proxy = CallbackProxy(sandbox.callback_socket, run_dir / CALLBACK_SOCKET_NAME)
        proc, reader, writer = await spawn_guest(sandbox, run_dir, proxy)
        repl = cls(sandbox, proc, run_dir, reader, writer, proxy)
        try:
            await asyncio.wait_for(repl._recv_ready(), START_TIMEOUT)
        except BaseException as exc:
            err, _ = repl._err.take()
            await repl.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ReplError(f"REPL failed to start: {err.strip()[-400:] or exc}") from exc
        return repl

    # --- protocol -----------------------------------------------------------------
    async def _recv_ready(self) -> None:
        try:
            await self._control.recv(protocol.Ready)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ReplError(await self._death_note()) from exc

    async def _request(self, message: protocol.HostMessage, expected: type[R],
                       timeout: float) -> R:
        if self.closed:
            raise ReplError("the REPL process is closed")
        async with self._lock:
            try:
                await self._control.send(message)
                return await asyncio.wait_for(
                    self._control.reply(expected, self.on_partial), timeout)
            except TimeoutError:  # an OSError too, but the caller's case
                raise
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                raise ReplError(await self._death_note()) from exc

    async def _death_note(self) -> str:
        with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
            await asyncio.wait_for(self.proc.wait(), 1.0)
        code = self.proc.returncode
        if code is None:
            return "the REPL closed its control channel"
        with contextlib.suppress(ValueError):
            if code < 0:
                return f"the REPL process was killed by signal {signal.Signals(-code).name}"
            # bwrap reports the guest's death by signal as 128+N.
            if code > 128:
                return f"the REPL process was killed by signal {signal.Signals(code - 128).name}"
        return f"the REPL process exited with status {code}"

    # --- operations ---------------------------------------------------------------
    async def load_context(self, context: Any, secret: str, tools: ToolGrant = NO_TOOLS) -> None:
        """Writes the context to a file the guest reads: no giant frame on a pipe."""
        kind: Any = "str" if isinstance(context, str | ContextFile) else "json"
        path = self.run_dir / ("context.txt" if kind == "str" else "context.json")
        if isinstance(context, ContextFile):
            # An uploaded context: linked (or copied by the kernel), never read here.
            await asyncio.to_thread(context.place, path)
        else:
            await asyncio.to_thread(_write_context, path, context, kind)
        guest_dir, guest_socket = self.sandbox.guest_paths(self.run_dir)
        request = protocol.InitRequest(context_path=f"{guest_dir}/{path.name}",
                                       context_kind=kind, secret=secret, socket=guest_socket,
                                       sandbox_tools=list(tools.sandbox),
                                       http_tools=list(tools.http))
        try:
            reply = await self._request(request, protocol.Ack, timeout=120.0)
        except TimeoutError:
            await self.close()
            raise ReplError("the REPL did not load the context within 120 s") from None
        except ReplError:
            await self.close()
            raise
        # The guest holds the context in memory now; the file only costs disk.
        with contextlib.suppress(OSError):
            path.unlink()
        if not reply.ok:
            raise ReplError(f"REPL could not load the context: {reply.error}")

    async def execute(self, code: str, timeout: float) -> ExecResult:
        """Runs one block. Never raises (but CancelledError): a REPL that failed is
        closed and the result says ``crashed``, with why in ``stderr``."""
        self._out.take()
        self._err.take()
        started = time.monotonic()
        try:
            request = protocol.ExecRequest(code=code, timeout=timeout)
            watch = "tmpfs" in self.sandbox.layers and self._max_tmp_files > 0
            reply = await tmpfs.capped(
                self._request(request, protocol.ExecReply, timeout + HARD_KILL_GRACE),
                self.proc.pid if watch else None, self._max_tmp_files)
            # Output written straight to fds 1/2 (os.write, child processes) comes via
            # the pipes; let the drains take what is already there.
            await asyncio.sleep(0)
            return self._result(reply)
        except TimeoutError:
            note = (f"TimeoutError: the block ran longer than {timeout:g} s and did not "
                    "stop when interrupted; the REPL process was killed.")
            return await self._crashed(started, note, timed_out=True)
        except ReplError as exc:
            return await self._crashed(started, str(exc))
        except Exception as exc:  # nothing from the guest may end the run
            log.exception("REPL block failed on the host side")
            return await self._crashed(started, f"the REPL failed ({type(exc).__name__}); "
                                                "the REPL process was killed.")

    async def _crashed(self, started: float, note: str, timed_out: bool = False) -> ExecResult:
        out, _ = self._out.take()
        err, _ = self._err.take()
        await self.close()
        limit = self.sandbox.settings.max_output_chars
        return ExecResult(stdout=output.clip(out, len(out), limit)[0],
                          stderr=(output.clip(err, len(err), limit)[0] + f"\n{note}").strip(),
                          error=True, timed_out=timed_out, crashed=True,
                          duration=time.monotonic() - started)

    def _result(self, reply: protocol.ExecReply) -> ExecResult:
        fd_out, out_unread = self._out.take()
        fd_err, err_unread = self._err.take()
        limit = self.sandbox.settings.max_output_chars
        stdout, out_cut = output.clip(reply.stdout + fd_out, reply.stdout_total + len(fd_out),
                                      limit, out_unread)
        stderr, err_cut = output.clip(reply.stderr + fd_err, reply.stderr_total + len(fd_err),
                                      limit, err_unread)
        return ExecResult(
            stdout=stdout, stderr=stderr, error=reply.error, timed_out=reply.timed_out,
            truncated=out_cut or err_cut, final=reply.final, partial=reply.partial or "",
            variables=reply.vars, duration=reply.duration,
        )

    async def get_var(self, name: str) -> tuple[bool, str]:
        """(True, str(value)) or (False, why not). Never raises (but CancelledError);
        when the REPL died or broke the protocol it is closed (``closed`` is True)."""
        try:
            reply = await self._request(protocol.GetVarRequest(name=name), protocol.VarReply,
                                        timeout=30.0)
        except Exception as exc:
            # The guest guards the variable's __str__ itself; no answer in time
            # means it is stuck or gone, and a late reply would desynchronise it.
            if not isinstance(exc, TimeoutError | ReplError):
                log.exception("FINAL_VAR failed on the host side")
            await self.close()
            why = str(exc) if isinstance(exc, ReplError) else "it timed out or failed"
            return False, f"the REPL did not return the variable ({why}); it was replaced"
        return (True, reply.value) if reply.ok else (False, reply.error)

    async def close(self) -> None:
        """Kills the process and everything it started, and removes its files.

        Runs to the end even if the caller is cancelled meanwhile (a client cancel lands
        at any instant): a half-done close would leave the run dir, fds and cgroups."""
        if self._closing is None:
            self.closed = True
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self.proc.returncode is None:
            # The session holds bwrap; killing it tears down the PID namespace,
            # which takes every process the model's code started with it.
            # Plain os.kill, not proc.kill(): Popen.send_signal polls first,
            # reaping the child behind asyncio's child watcher, which then
            # logs "Unknown child process" and loses the exit status.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
        self._control.writer.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 5.0)
        await output.stop(self._out, self._err)
        await self.proxy.close()
        # Whatever left the process tree (a daemon that dodged the PID namespace's end)
        # is still in the REPL's cgroups.
        await asyncio.to_thread(self.sandbox.release, self.run_dir)
        await asyncio.to_thread(shutil.rmtree, self.run_dir, True)


def _write_context(path: Path, context: Any, kind: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with open(fd, "w", encoding="utf-8") as f:
        if kind == "str":
            f.write(context)
        else:
            json.dump(context, f, ensure_ascii=False)

