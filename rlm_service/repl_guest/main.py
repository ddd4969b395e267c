"""Entry point of a sandboxed REPL process: ``python -m rlm_service.repl_guest --ctrl-fd N``.

The process applies its resource limits, reports ready, then serves control
frames (init, exec, get_var) until the service closes the channel. One process
serves exactly one run.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from rlm_service.repl_guest import protocol

T = TypeVar("T")
# How long str() of a FINAL_VAR variable may take (it runs the model's __str__).
GET_VAR_TIMEOUT = 10.0
# Text values sent to the service are cut here, so a frame never exceeds MAX_FRAME
# (a character is at most 4 bytes of UTF-8, and JSON may escape some further).
MAX_VALUE_CHARS = protocol.MAX_FRAME // 8

_INJECTED = (
    "context", "llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched",
    "SHOW_VARS", "FINAL", "FINAL_VAR", "answer",
)


class _BlockTimeout(BaseException):
    """Raised in the main thread when a block outlives its wall-clock limit."""


class _FinalSignal(BaseException):
    """Stops the rest of a block once FINAL/FINAL_VAR gave the answer."""


class _Capture(io.TextIOBase):
    """A stdout/stderr stand-in that keeps at most ``limit`` characters.

    Output past the limit is counted and dropped, so a ``while True: print()``
    costs CPU time but never memory.
    """

    def __init__(self, limit: int) -> None:
        self._parts: list[str] = []
        self._kept = 0
        self.total = 0
        self._limit = limit
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        with self._lock:
            self.total += len(s)
            room = self._limit - self._kept
            if room > 0:
                piece = s[:room]
                self._parts.append(piece)
                self._kept += len(piece)
        return len(s)

    def getvalue(self) -> str:
        with self._lock:
            return "".join(self._parts)


def _apply_limits(limits: dict[str, int]) -> None:
    pairs = {
        "as_bytes": resource.RLIMIT_AS,
        "cpu_seconds": resource.RLIMIT_CPU,
        "processes": resource.RLIMIT_NPROC,
        "open_files": resource.RLIMIT_NOFILE,
        "file_bytes": resource.RLIMIT_FSIZE,
    }
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for key, which in pairs.items():
        value = limits.get(key)
        if value:
            # The hard limit too, so user code cannot raise it back.
            resource.setrlimit(which, (value, value))


class _Answer(dict[str, Any]):
    """The REPL's ``answer`` dict; setting its content also pushes it to the service."""

    def __init__(self, push: Any) -> None:
        super().__init__(content="", ready=False)
        self._push = push

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if key == "content":
            self._push(value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        changes = dict(*args, **kwargs)
        super().update(changes)
        if "content" in changes:
            self._push(self["content"])


class Guest:
    def __init__(self, ctrl: socket.socket, max_output: int) -> None:
        self._ctrl = ctrl
        self._rfile = ctrl.makefile("rb")
        self._max_output = max_output
        self._secret = ""
        self._stub: Any = None
        self._pb: Any = None
        self._final: str | None = None
        self._block_no = 0
        self._main_ident = threading.get_ident()
        self._last_push = -protocol.PUSH_INTERVAL
        # True only while model code runs under a watchdog; a timer signal that
        # lands a moment later (the code just finished) must not raise.
        self._armed = False
        self.ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}

    # --- control channel ------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        self._ctrl.sendall(protocol.encode(message))

    def _push_partial(self, content: object) -> None:
        """Tells the service about a new ``answer["content"]`` mid-block, so a
        budget stop that kills the block still has it. At most one push per
        PUSH_INTERVAL: a loop rewriting the answer must not flood the channel
        (the block's reply always carries the latest value)."""
        now = time.monotonic()
        if (now - self._last_push < protocol.PUSH_INTERVAL
                or threading.get_ident() != self._main_ident):
            return
        self._last_push = now
        with contextlib.suppress(ValueError, OSError):
            self.send({"push": protocol.PUSH_PARTIAL,
                       "content": str(content)[:protocol.PUSH_MAX_CHARS]})

    def recv(self) -> dict[str, Any] | None:
        header = self._rfile.read(protocol.HEADER.size)
        if len(header) < protocol.HEADER.size:
            return None
        body = self._rfile.read(protocol.decode_length(header))
        return protocol.decode_body(body)

    def serve(self) -> None:
        while True:
            message = self.recv()
            if message is None:
                return
            op = message.get("op")
            if op == "init":
                self.send(self._init(message))
            elif op == "exec":
                self.send(self._exec(message["code"], float(message.get("timeout", 0))))
            elif op == "get_var":
                self.send(self._get_var(str(message.get("name", ""))))
            else:
                self.send({"ok": False, "error": f"unknown op {op!r}"})

    # --- ops ------------------------------------------------------------------
    def _init(self, message: dict[str, Any]) -> dict[str, Any]:
        import grpc

        from rlm_service._gen.rlm.internal.v1 import llm_query_pb2, llm_query_pb2_grpc

        self._secret = str(message["secret"])
        channel = grpc.insecure_channel(
            "unix://" + str(message["socket"]),
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
            ],
        )
        self._stub = llm_query_pb2_grpc.LLMQueryServiceStub(channel)
        self._pb = llm_query_pb2
        path = str(message["context_path"])
        if message.get("context_kind") == "str":
            with open(path, encoding="utf-8") as f:
                context: Any = f.read()
        else:
            with open(path, encoding="utf-8") as f:
                context = json.load(f)
        self.ns.update(
            context=context,
            llm_query=self.llm_query,
            llm_query_batched=self.llm_query_batched,
            rlm_query=self.rlm_query,
            rlm_query_batched=self.rlm_query_batched,
            SHOW_VARS=self.show_vars,
            FINAL=self.final,
            FINAL_VAR=self.final_var,
            answer=_Answer(self._push_partial),
        )
        return {"ok": True}

    def _exec(self, code: str, timeout: float) -> dict[str, Any]:
        self._block_no += 1
        self._final = None
        out, err = _Capture(self._max_output), _Capture(self._max_output)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        error = False
        timed_out = False
        started = time.monotonic()
        try:
            self._guarded(lambda: self._run_code(code), timeout)
        except _FinalSignal:
            pass
        except _BlockTimeout:
            timed_out = error = True
            err.write(f"\nTimeoutError: the block ran longer than {timeout:g} s and was stopped.\n")
        except SystemExit as exc:
            error = True
            err.write(f"SystemExit({exc.code!r}) ignored: the REPL keeps running.\n")
        except BaseException as exc:
            error = True
            err.write(self._format_exception(exc))
        finally:
            sys.stdout, sys.stderr = saved
        answer = self.ns.get("answer")
        final = self._final
        partial = ""
        if isinstance(answer, dict):
            partial = str(answer.get("content", "") or "")
            if final is None and answer.get("ready") is True:
                final = partial
        return {
            "ok": True,
            "stdout": out.getvalue(),
            "stderr": err.getvalue(),
            "stdout_total": out.total,
            "stderr_total": err.total,
            "error": error,
            "timed_out": timed_out,
            "final": None if final is None else final[:MAX_VALUE_CHARS],
            "partial": partial[:MAX_VALUE_CHARS],
            "vars": self._user_vars(),
            "duration": time.monotonic() - started,
        }

    def _run_code(self, code: str) -> None:
        name = f"<block {self._block_no}>"
        tree = ast.parse(code, filename=name, mode="exec")
        last = None
        tail = tree.body[-1] if tree.body else None
        if isinstance(tail, ast.Expr):
            # Like a notebook: a trailing expression's value is shown.
            tree.body.pop()
            last = ast.Expression(tail.value)
        exec(compile(tree, name, "exec"), self.ns)
        if last is not None:
            value = eval(compile(last, name, "eval"), self.ns)
            if value is not None:
                print(repr(value))

    def _guarded(self, fn: Callable[[], T], timeout: float) -> T:
        """Runs ``fn`` (model code) here in the main thread; past ``timeout`` it
        is interrupted with _BlockTimeout."""
        done = threading.Event()
        if timeout > 0:
            threading.Thread(target=self._watch, args=(done, timeout), daemon=True).start()
        self._armed = True
        try:
            return fn()
        finally:
            self._armed = False
            done.set()

    def _watch(self, done: threading.Event, timeout: float) -> None:
        if not done.wait(timeout):
            # A real signal, so blocking calls such as time.sleep are interrupted too.
            signal.pthread_kill(self._main_ident, signal.SIGUSR1)

    def on_timer_signal(self, signum: int, frame: Any) -> None:
        if self._armed:
            raise _BlockTimeout

    @staticmethod
    def _format_exception(exc: BaseException) -> str:
        tb = exc.__traceback__
        # Drop this module's own frames so the model sees only its code.
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        return "".join(traceback.format_exception(type(exc), exc, tb))

    def _get_var(self, name: str) -> dict[str, Any]:
        if name not in self.ns:
            return {"ok": False, "error": f"no variable named {name!r} in the REPL"}
        # str() runs the model's own __str__: guard it like a block.
        try:
            value = self._guarded(lambda: str(self.ns[name]), GET_VAR_TIMEOUT)
        except _BlockTimeout:
            return {"ok": False, "error": f"turning {name!r} into text took over "
                                          f"{GET_VAR_TIMEOUT:g} s"}
        except Exception as exc:
            return {"ok": False, "error": f"turning {name!r} into text failed: "
                                          f"{type(exc).__name__}"}
        return {"ok": True, "value": value[:MAX_VALUE_CHARS]}

    def _user_vars(self) -> list[str]:
        return sorted(
            k for k, v in self.ns.items()
            if not k.startswith("_") and k not in _INJECTED and not isinstance(v, type(sys))
        )

    # --- functions the model's code calls --------------------------------------
    def final(self, value: Any = "") -> None:
        self._final = str(value)
        raise _FinalSignal

    def final_var(self, name: Any) -> None:
        if isinstance(name, str):
            key = name.strip().strip("'\"")
            if key not in self.ns:
                raise NameError(f"FINAL_VAR: no variable named {key!r}; assign it first")
            self._final = str(self.ns[key])
        else:
            self._final = str(name)
        raise _FinalSignal

    def show_vars(self) -> None:
        names = self._user_vars()
        if not names:
            print("No user variables yet.")
        for k in names:
            print(f"{k}: {type(self.ns[k]).__name__}")

    def _call(self, method: str, request: Any) -> Any:
        import grpc

        try:
            return getattr(self._stub, method)(
                request, metadata=((protocol.SECRET_METADATA_KEY, self._secret),)
            )
        except grpc.RpcError as exc:
            details = exc.details() if hasattr(exc, "details") else str(exc)
            return self._pb.QueryResponse(text=f"Error: sub-call failed: {details}", error=True)

    def llm_query(self, prompt: Any, model: str | None = None) -> str:
        request = self._pb.QueryRequest(prompt=str(prompt), model=model or "")
        return str(self._call("Query", request).text)

    def llm_query_batched(self, prompts: Any, model: str | None = None) -> list[str]:
        request = self._pb.QueryBatchedRequest(
            prompts=[str(p) for p in prompts], model=model or ""
        )
        reply = self._call("QueryBatched", request)
        if isinstance(reply, self._pb.QueryResponse):
            return [str(reply.text)] * len(request.prompts)
        return [str(r.text) for r in reply.responses]

    def rlm_query(self, prompt: Any, context: Any = None, model: str | None = None) -> str:
        request = self._pb.QueryRequest(prompt=str(prompt), model=model or "", recursive=True)
        if context is not None:
            _fill_value(request.context, context)
        return str(self._call("Query", request).text)

    def rlm_query_batched(
        self, prompts: Any, contexts: Any = None, model: str | None = None
    ) -> list[str]:
        prompts = [str(p) for p in prompts]
        request = self._pb.QueryBatchedRequest(prompts=prompts, model=model or "", recursive=True)
        if contexts is not None:
            contexts = list(contexts)
            if len(contexts) != len(prompts):
                raise ValueError("rlm_query_batched: contexts must have one item per prompt")
            for c in contexts:
                _fill_value(request.contexts.add(), c)
        reply = self._call("QueryBatched", request)
        if isinstance(reply, self._pb.QueryResponse):
            return [str(reply.text)] * len(prompts)
        return [str(r.text) for r in reply.responses]


def _fill_value(target: Any, obj: Any) -> None:
    from google.protobuf import json_format

    if isinstance(obj, str):
        target.string_value = obj
        return
    try:
        json_format.ParseDict(json.loads(json.dumps(obj, default=str)), target)
    except (TypeError, ValueError, json_format.ParseError):
        target.string_value = str(obj)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ctrl-fd", type=int, required=True)
    parser.add_argument("--limits", default="{}")
    parser.add_argument("--max-output", type=int, default=20_000)
    args = parser.parse_args()
    _apply_limits(json.loads(args.limits))
    # Model code sees no stdin; fds 1/2 stay pipes the service drains.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    ctrl = socket.socket(fileno=args.ctrl_fd)
    # gRPC's fork handlers restart its threads in every forked child and abort when
    # pthread_create fails: a fork bomb would hang the block instead of meeting
    # RLIMIT_NPROC. A forked child cannot use the parent's channel either way.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    import grpc  # noqa: F401  (imported before ready so a run never pays for it)

    from rlm_service._gen.rlm.internal.v1 import llm_query_pb2_grpc  # noqa: F401

    guest = Guest(ctrl, args.max_output)
    signal.signal(signal.SIGUSR1, guest.on_timer_signal)
    guest.send({"op": "ready", "pid": os.getpid()})
    guest.serve()


if __name__ == "__main__":
    main()
