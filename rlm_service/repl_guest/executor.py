"""Runs the model's blocks: one namespace, captured output, a wall-clock limit per block.

Nothing the model's code does to its own data may kill this process: odd strings,
odd namespace keys and oversize answers all become errors the model sees.
"""

from __future__ import annotations

import ast
import io
import signal
import sys
import threading
import time
from collections.abc import Callable

from rlm_service.repl_guest import protocol
from rlm_service.repl_guest.records import record

TYPE_CHECKING = False  # typing is not imported: the guest pays for every import
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")
# How long str() of a FINAL_VAR variable may take (it runs the model's __str__).
GET_VAR_TIMEOUT = 10.0
_GUEST_DIR = __file__.rsplit("/", 1)[0]


class BlockTimeout(BaseException):
    """Raised in the main thread when a block outlives its wall-clock limit."""


class FinalSignal(BaseException):
    """Stops the rest of a block once FINAL/FINAL_VAR gave the answer."""

    def __init__(self, answer: str) -> None:
        super().__init__()
        self.answer = answer


class Capture(io.TextIOBase):
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
        s = str.__str__(s)  # a plain str: a subclass's own slicing must not reach the reply
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


def too_long(what: str, size: int) -> str:
    return (f"{what} has {size:,} characters; the limit for an answer is "
            f"{protocol.MAX_ANSWER_CHARS:,}. Shorten it (or summarise) and answer again.")


@record
class Outcome:
    """What one block left behind, before it becomes an ``ExecReply``."""

    stdout: Capture
    stderr: Capture
    error: bool
    timed_out: bool
    final: str | None
    duration: float


class Executor:
    def __init__(self, max_output: int, reserved: frozenset[str]) -> None:
        self.max_output = max_output
        self.reserved = reserved
        self.ns: dict[Any, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self._block_no = 0
        self._main_ident = threading.get_ident()
        # True only while model code runs under a watchdog; a timer signal that
        # lands a moment later (the code just finished) must not raise.
        self._armed = False

    def install_timer(self) -> None:
        signal.signal(signal.SIGUSR1, self.on_timer_signal)

    def in_main_thread(self) -> bool:
        return threading.get_ident() == self._main_ident

    # --- blocks -----------------------------------------------------------------
    def run_block(self, code: str, timeout: float) -> Outcome:
        self._block_no += 1
        out, err = Capture(self.max_output), Capture(self.max_output)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        error = timed_out = False
        final: str | None = None
        started = time.monotonic()
        try:
            self.guarded(lambda: self._run_code(code), timeout)
        except FinalSignal as signal_:
            final = signal_.answer
        except BlockTimeout:
            timed_out = error = True
            err.write(f"\nTimeoutError: the block ran longer than {timeout:g} s and was stopped.\n")
        except SystemExit as exc:
            error = True
            err.write(f"SystemExit({exc.code!r}) ignored: the REPL keeps running.\n")
        except BaseException as exc:
            error = True
            err.write(self.format_exception(exc))
        finally:
            sys.stdout, sys.stderr = saved
        return Outcome(out, err, error, timed_out, final, time.monotonic() - started)

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

    def guarded(self, fn: Callable[[], T], timeout: float) -> T:
        """Runs ``fn`` (model code) here in the main thread; past ``timeout`` it
        is interrupted with BlockTimeout."""
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
            raise BlockTimeout

    @staticmethod
    def format_exception(exc: BaseException) -> str:
        tb = exc.__traceback__
        # Drop the guest's own frames so the model sees only its code.
        while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_GUEST_DIR):
            tb = tb.tb_next
        import traceback  # only when there is an error to show (it loads tokenize)

        try:
            return "".join(traceback.format_exception(type(exc), exc, tb))
        except BaseException:  # the model's own __str__ failed too
            return f"{type(exc).__name__} (its message could not be shown)\n"

    # --- the namespace ----------------------------------------------------------
    def user_vars(self) -> list[str]:
        """The model's variable names, clipped: a name is the model's data too."""
        names = []
        for key, value in list(self.ns.items()):
            if not isinstance(key, str):
                continue
            name = str.__str__(key)  # the model's str subclass keeps its own methods
            if (name and not name.startswith("_") and name not in self.reserved
                    and not isinstance(value, type(sys))):
                names.append(protocol.clip_name(name))
        names.sort()
        if len(names) > protocol.MAX_VARS:
            names = [*names[:protocol.MAX_VARS - 1], f"... {len(names):,} in all"]
        return names

    def value_text(self, name: str) -> tuple[str | None, str]:
        """(str(ns[name]), "") or (None, why not), for FINAL_VAR named in the reply."""
        shown = protocol.clip_name(name)
        if name not in self.ns:
            return None, f"no variable named {shown!r} in the REPL"
        # str() runs the model's own __str__: guard it like a block.
        try:
            value = self.guarded(lambda: _as_text(self.ns[name]), GET_VAR_TIMEOUT)
        except BlockTimeout:
            return None, f"turning {shown!r} into text took over {GET_VAR_TIMEOUT:g} s"
        except BaseException as exc:
            return None, f"turning {shown!r} into text failed: {type(exc).__name__}"
        if len(value) > protocol.MAX_ANSWER_CHARS:
            return None, too_long(f"FINAL_VAR({shown})", len(value))
        return value, ""


def _as_text(value: Any) -> str:
    text = str(value)
    if not isinstance(text, str):  # a str subclass's __str__ may return anything
        raise TypeError("__str__ returned a non-string")
    return str.__str__(text)
