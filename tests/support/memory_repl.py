"""An in-memory REPL for unit tests of the run loop: the same interface as the
sandboxed ReplProcess (rlm_service.run.ports.Repl), with model code run by exec()
in a thread of this process. A test seam only: it isolates nothing and does not
enforce block timeouts (a thread cannot be interrupted).

Sub-calls take the real path minus the socket: the secret finds the run in the
CallbackRegistry, and rlm_service.run.subcalls does the rest. ``CRASH()`` in a
block stands for the interpreter dying (os._exit in the sandbox)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

from rlm_service.callback import CallbackRegistry
from rlm_service.repl import ExecResult, ReplError
from rlm_service.run import subcalls
from rlm_service.run.loop import Run
from rlm_service.tools import NO_TOOLS, ToolGrant

_INJECTED = {"context", "llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched",
             "FINAL", "FINAL_VAR", "SHOW_VARS", "CRASH", "answer", "print"}


class _Final(BaseException):
    pass


class _Crash(BaseException):
    pass


class _Answer(dict[str, Any]):
    def __init__(self, push: Callable[[str], None]) -> None:
        super().__init__(content="", ready=False)
        self._push = push

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if key == "content":
            self._push(str(value))


class MemoryRepl:
    """One in-process interpreter serving one run."""

    def __init__(self, registry: CallbackRegistry, max_output: int = 20_000) -> None:
        self.on_partial: Callable[[str], None] | None = None
        self.closed = False
        self.blocks: list[str] = []
        self._registry = registry
        self._max_output = max_output
        self._loop = asyncio.get_running_loop()
        self._secret = ""
        self._final: str | None = None
        self._out: list[str] = []
        self._err: list[str] = []
        self._thread: threading.Thread | None = None
        self._pending: set[Future[Any]] = set()
        self.ns: dict[str, Any] = {"__name__": "__main__"}

    # --- the Repl interface -------------------------------------------------------
    async def load_context(self, context: Any, secret: str, tools: ToolGrant = NO_TOOLS) -> None:
        if self.closed:
            raise ReplError("the REPL is closed")
        self._secret = secret
        self.ns.update(
            context=context, llm_query=self._llm_query, llm_query_batched=self._llm_batched,
            rlm_query=self._rlm_query, rlm_query_batched=self._rlm_batched,
            FINAL=self._final_fn, FINAL_VAR=self._final_var, SHOW_VARS=self._show_vars,
            CRASH=self._crash, answer=_Answer(self._push), print=self._print)

    async def execute(self, code: str, timeout: float) -> ExecResult:
        if self.closed:
            return ExecResult(stderr="the REPL is closed", error=True, crashed=True)
        self.blocks.append(code)
        self._final, self._out, self._err = None, [], []
        started = time.monotonic()
        done: asyncio.Future[tuple[bool, bool]] = self._loop.create_future()

        def work() -> None:
            outcome = self._run(code)
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                self._loop.call_soon_threadsafe(
                    lambda: done.done() or done.set_result(outcome))

        # Its own thread, not the default executor: nested runs block their
        # threads on sub-calls and must not exhaust a shared pool.
        self._thread = threading.Thread(target=work, daemon=True, name="memory-repl")
        self._thread.start()
        error, crashed = await done
        answer = self.ns.get("answer")
        partial = str(answer.get("content", "")) if isinstance(answer, dict) else ""
        final = self._final
        if final is None and isinstance(answer, dict) and answer.get("ready") is True:
            final = partial
        if crashed:
            self.closed = True
            return ExecResult(stdout="".join(self._out), stderr="the REPL process died",
                              error=True, crashed=True, duration=time.monotonic() - started)
        stdout, stderr = "".join(self._out), "".join(self._err)
        return ExecResult(
            stdout=stdout[:self._max_output], stderr=stderr[:self._max_output], error=error,
            truncated=len(stdout) > self._max_output or len(stderr) > self._max_output,
            final=final, partial=partial, variables=self._user_vars(),
            duration=time.monotonic() - started)

    async def close(self) -> None:
        """Like killing the process: sub-calls in flight fail, the block's thread ends."""
        self.closed = True
        for future in list(self._pending):
            future.cancel()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)

    async def get_var(self, name: str) -> tuple[bool, str]:
        if name not in self.ns:
            return False, f"no variable named {name!r} in the REPL"
        return True, str(self.ns[name])

    # --- running code --------------------------------------------------------------
    def _run(self, code: str) -> tuple[bool, bool]:
        """(error, crashed), run in the block's thread."""
        try:
            tree = ast.parse(code, mode="exec")
            tail = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, "<block>", "exec"), self.ns)
            if isinstance(tail, ast.Expr):
                value = eval(compile(ast.Expression(tail.value), "<block>", "eval"), self.ns)
                if value is not None:
                    self._print(repr(value))
        except _Final:
            pass
        except _Crash:
            return True, True
        except BaseException as exc:
            self._err.append("".join(traceback.format_exception_only(exc)))
            return True, False
        return False, False

    def _print(self, *args: Any, sep: str = " ", end: str = "\n", **_: Any) -> None:
        self._out.append(sep.join(map(str, args)) + end)

    def _push(self, content: str) -> None:
        if self.on_partial is not None:
            self._loop.call_soon_threadsafe(self.on_partial, content)

    def _user_vars(self) -> list[str]:
        return sorted(k for k in self.ns if not k.startswith("_") and k not in _INJECTED)

    # --- functions the model's code calls --------------------------------------------
    def _final_fn(self, value: Any = "") -> None:
        self._final = str(value)
        raise _Final

    def _final_var(self, name: Any) -> None:
        key = str(name).strip().strip("'\"")
        if key not in self.ns:
            raise NameError(f"FINAL_VAR: no variable named {key!r}; assign it first")
        self._final = str(self.ns[key])
        raise _Final

    def _show_vars(self) -> None:
        for k in self._user_vars():
            self._print(f"{k}: {type(self.ns[k]).__name__}")

    def _crash(self) -> None:
        raise _Crash

    def _call(self, make: Callable[[Run], Coroutine[Any, Any, Any]]) -> Any:
        run = self._registry.lookup(self._secret)
        if run is None or self.closed:
            raise RuntimeError("unknown or expired run secret")
        future: Future[Any] = asyncio.run_coroutine_threadsafe(run.spawn(make(run)),
                                                               self._loop)
        self._pending.add(future)
        try:
            return future.result()
        finally:
            self._pending.discard(future)

    def _llm_query(self, prompt: Any, model: str | None = None) -> str:
        text, _ = self._call(lambda run: subcalls.query(run, str(prompt), model or "", False,
                                                        None, False))
        return str(text)

    def _llm_batched(self, prompts: Any, model: str | None = None) -> list[str]:
        results = self._call(lambda run: subcalls.query_batched(
            run, [str(p) for p in prompts], model or "", False, None))
        return [str(t) for t, _ in results]

    def _rlm_query(self, prompt: Any, context: Any = None, model: str | None = None) -> str:
        text, _ = self._call(lambda run: subcalls.query(run, str(prompt), model or "", True,
                                                        context, context is not None))
        return str(text)

    def _rlm_batched(self, prompts: Any, contexts: Any = None,
                     model: str | None = None) -> list[str]:
        ctx = list(contexts) if contexts is not None else None
        results = self._call(lambda run: subcalls.query_batched(
            run, [str(p) for p in prompts], model or "", True, ctx))
        return [str(t) for t, _ in results]


class MemoryReplPool:
    """The ReplProvider for tests: a fresh MemoryRepl per acquire."""

    def __init__(self, registry: CallbackRegistry) -> None:
        self.registry = registry
        self.acquired: list[MemoryRepl] = []
        self.released: list[MemoryRepl] = []
        self.fail_next_acquire = False

    async def acquire(self) -> MemoryRepl:
        if self.fail_next_acquire:
            self.fail_next_acquire = False
            raise ReplError("no interpreter could be started")
        repl = MemoryRepl(self.registry)
        self.acquired.append(repl)
        return repl

    async def release(self, repl: MemoryRepl, /) -> None:
        self.released.append(repl)
        await repl.close()

    @property
    def live(self) -> int:
        return len(self.acquired) - len(self.released)
