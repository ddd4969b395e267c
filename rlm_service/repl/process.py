"""Host side of one sandboxed REPL process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlm_service.repl.sandbox import Sandbox
from rlm_service.repl_guest import protocol
from rlm_service.uploads.file import ContextFile

log = logging.getLogger(__name__)

# What the host takes in pushes while it waits for a reply: a push costs one
# unit plus one per PUSH_MAX_CHARS of content, and the allowance is PUSH_BURST
# units plus one per half PUSH_INTERVAL. An honest guest stays well inside;
# forged frames cannot keep the service decoding (one frame of up to MAX_FRAME
# at most, then the REPL is dropped).
PUSH_BURST = 4.0
MIN_PUSH_INTERVAL = protocol.PUSH_INTERVAL / 2
# How long past its own limit a block may take before the process is killed:
# the guest interrupts the block itself first, this catches code that ignores it.
HARD_KILL_GRACE = 2.0
START_TIMEOUT = 30.0


class ReplError(Exception):
    """The REPL process died or broke the protocol; its state is gone."""


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


class _Drain:
    """Reads a pipe continuously, keeping at most ``limit`` bytes per block."""

    def __init__(self, stream: asyncio.StreamReader, limit: int) -> None:
        self._buf = bytearray()
        self.dropped = 0
        self._limit = limit
        self.task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while chunk := await stream.read(65536):
                room = self._limit - len(self._buf)
                if room > 0:
                    self._buf += chunk[:room]
                self.dropped += max(0, len(chunk) - max(room, 0))

    def take(self) -> tuple[str, int]:
        data, dropped = bytes(self._buf), self.dropped
        self._buf.clear()
        self.dropped = 0
        return data.decode(errors="replace"), dropped


class ReplProcess:
    """One sandboxed interpreter. Serves exactly one run, then is destroyed."""

    def __init__(self, sandbox: Sandbox, proc: asyncio.subprocess.Process, run_dir: Path,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sandbox = sandbox
        self.proc = proc
        self.run_dir = run_dir
        self._reader = reader
        self._writer = writer
        limit = sandbox.settings.max_output_chars * 4
        assert proc.stdout is not None and proc.stderr is not None
        self._out = _Drain(proc.stdout, limit)
        self._err = _Drain(proc.stderr, limit)
        self._lock = asyncio.Lock()
        self.closed = False
        # Called with ``answer["content"]`` whenever the running block changes it.
        self.on_partial: Callable[[str], None] | None = None

    @classmethod
    async def start(cls, sandbox: Sandbox) -> ReplProcess:
        run_dir = sandbox.runtime_dir / "runs" / secrets.token_hex(8)
        run_dir.mkdir(parents=True, mode=0o755)
        os.chmod(run_dir, 0o755)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            launch = sandbox.launch(run_dir, child.fileno(), sandbox.next_uid())
            proc = await asyncio.create_subprocess_exec(
                *launch.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=launch.env,
                **launch.popen_kwargs,
            )
        except BaseException:
            parent.close()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            child.close()
        try:
            reader, writer = await asyncio.open_unix_connection(
                sock=parent, limit=protocol.MAX_FRAME + 16
            )
        except BaseException:
            # Cancelled here (a pool closing), nothing else owns the process yet.
            parent.close()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        repl = cls(sandbox, proc, run_dir, reader, writer)
        try:
            await asyncio.wait_for(repl._recv(), START_TIMEOUT)  # the "ready" frame
        except BaseException as exc:
            err, _ = repl._err.take()
            await repl.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ReplError(f"REPL failed to start: {err.strip()[-400:] or exc}") from exc
        return repl

    # --- protocol -----------------------------------------------------------------
    async def _send(self, message: dict[str, Any]) -> None:
        self._writer.write(protocol.encode(message))
        await self._writer.drain()

    async def _recv(self) -> dict[str, Any]:
        try:
            header = await self._reader.readexactly(protocol.HEADER.size)
            body = await self._reader.readexactly(protocol.decode_length(header))
            return protocol.decode_body(body)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, RecursionError) as exc:
            # RecursionError: a deeply nested JSON frame forged by the model's code.
            raise ReplError(await self._death_note()) from exc

    async def _request(self, message: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        if self.closed:
            raise ReplError("the REPL process is closed")
        async with self._lock:
            try:
                await self._send(message)
            except (ConnectionError, OSError) as exc:
                raise ReplError(await self._death_note()) from exc
            return await asyncio.wait_for(self._reply(), timeout)

    async def _reply(self) -> dict[str, Any]:
        """The reply to the request just sent, taking in the guest's pushes on the way."""
        started = time.monotonic()
        spent = 0.0
        while True:
            message = await self._recv()
            if message.get("push") != protocol.PUSH_PARTIAL:
                return message
            content = str(message.get("content", ""))
            spent += 1 + len(content) / protocol.PUSH_MAX_CHARS
            if spent > PUSH_BURST + (time.monotonic() - started) / MIN_PUSH_INTERVAL:
                raise ReplError("the REPL sent more answer updates than its guest ever "
                                "does (forged control frames)")
            if self.on_partial is not None:
                self.on_partial(content)

    async def _death_note(self) -> str:
        with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
            await asyncio.wait_for(self.proc.wait(), 1.0)
        code = self.proc.returncode
        if code is None:
            return "the REPL closed its control channel"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"the REPL process was killed by signal {name}"
        # bwrap reports the guest's death by signal as 128+N.
        if code > 128:
            with contextlib.suppress(ValueError):
                return f"the REPL process was killed by signal {signal.Signals(code - 128).name}"
        return f"the REPL process exited with status {code}"

    # --- operations ---------------------------------------------------------------
    async def load_context(self, context: Any, secret: str) -> None:
        """Writes the context to a file the guest reads: no giant frame on a pipe."""
        kind = "str" if isinstance(context, str | ContextFile) else "json"
        path = self.run_dir / ("context.txt" if kind == "str" else "context.json")
        if isinstance(context, ContextFile):
            # An uploaded context: linked (or copied by the kernel), never read here.
            await asyncio.to_thread(context.place, path)
        else:
            await asyncio.to_thread(_write_context, path, context, kind)
        guest_dir, guest_socket = self.sandbox.guest_paths(self.run_dir)
        try:
            reply = await self._request({
                "op": "init",
                "context_path": f"{guest_dir}/{path.name}",
                "context_kind": kind,
                "secret": secret,
                "socket": guest_socket,
            }, timeout=120.0)
        except TimeoutError:
            await self.close()
            raise ReplError("the REPL did not load the context within 120 s") from None
        # The guest holds the context in memory now; the file only costs disk.
        with contextlib.suppress(OSError):
            path.unlink()
        if not reply.get("ok"):
            raise ReplError(f"REPL could not load the context: {reply.get('error', '')}")

    async def execute(self, code: str, timeout: float) -> ExecResult:
        self._out.take()
        self._err.take()
        started = time.monotonic()
        try:
            reply = await self._request({"op": "exec", "code": code, "timeout": timeout},
                                        timeout=timeout + HARD_KILL_GRACE)
        except TimeoutError:
            await self.close()
            return ExecResult(
                stderr=f"TimeoutError: the block ran longer than {timeout:g} s and did not "
                       "stop when interrupted; the REPL process was killed.",
                error=True, timed_out=True, crashed=True,
                duration=time.monotonic() - started,
            )
        except ReplError as exc:
            out, _ = self._out.take()
            err, _ = self._err.take()
            await self.close()
            return ExecResult(stdout=out, stderr=(err + f"\n{exc}").strip(), error=True,
                              crashed=True, duration=time.monotonic() - started)
        # Output written straight to fds 1/2 (os.write, child processes) comes via the pipes.
        await asyncio.sleep(0)
        try:
            return self._result(reply, started)
        except (TypeError, ValueError, AttributeError) as exc:
            # The model's code wrote its own frame on the control channel.
            await self.close()
            return ExecResult(stderr=f"the REPL broke the control protocol ({exc}); the REPL "
                                     "process was killed.", error=True, crashed=True,
                              duration=time.monotonic() - started)

    def _result(self, reply: dict[str, Any], started: float) -> ExecResult:
        fd_out, out_dropped = self._out.take()
        fd_err, err_dropped = self._err.take()
        limit = self.sandbox.settings.max_output_chars
        stdout, out_cut = _clip(str(reply.get("stdout", "")) + fd_out,
                                int(reply.get("stdout_total", 0)) + len(fd_out) + out_dropped,
                                limit)
        stderr, err_cut = _clip(str(reply.get("stderr", "")) + fd_err,
                                int(reply.get("stderr_total", 0)) + len(fd_err) + err_dropped,
                                limit)
        final = reply.get("final")
        return ExecResult(
            stdout=stdout, stderr=stderr,
            error=bool(reply.get("error")), timed_out=bool(reply.get("timed_out")),
            truncated=out_cut or err_cut,
            final=None if final is None else str(final),
            partial=str(reply.get("partial", "")),
            variables=[str(v) for v in reply.get("vars", [])],
            duration=float(reply.get("duration", time.monotonic() - started)),
        )

    async def get_var(self, name: str) -> tuple[bool, str]:
        try:
            reply = await self._request({"op": "get_var", "name": name}, timeout=30.0)
        except (TimeoutError, ReplError) as exc:
            # The guest guards the variable's __str__ itself; no answer in time
            # means it is stuck or gone, and a late reply would desynchronise it.
            await self.close()
            return False, f"the REPL did not return the variable ({exc or 'timed out'})"
        if reply.get("ok"):
            return True, str(reply.get("value", ""))
        return False, str(reply.get("error", ""))

    async def close(self) -> None:
        """Kills the process and everything it started, and removes its files."""
        if self.closed:
            return
        self.closed = True
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
        self._writer.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 5.0)
        for drain in (self._out, self._err):
            drain.task.cancel()
        await asyncio.gather(self._out.task, self._err.task, return_exceptions=True)
        await asyncio.to_thread(shutil.rmtree, self.run_dir, True)


def _write_context(path: Path, context: Any, kind: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with open(fd, "w", encoding="utf-8") as f:
        if kind == "str":
            f.write(context)
        else:
            json.dump(context, f, ensure_ascii=False)


def _clip(text: str, total: int, limit: int) -> tuple[str, bool]:
    if total <= limit and len(text) <= limit:
        return text, False
    kept = text[:limit]
    return kept + f"\n... [output cut: showing {len(kept):,} of {max(total, len(text)):,} characters]", True
