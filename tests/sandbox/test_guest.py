"""The in-sandbox executor driven directly, for timing races a whole run cannot aim at."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from rlm_service.repl_guest.executor import Executor


@pytest.fixture
def executor() -> Iterator[Executor]:
    executor = Executor(max_output=1000, reserved=frozenset())
    previous = signal.signal(signal.SIGUSR1, executor.on_timer_signal)
    try:
        yield executor
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_late_timer_signal_is_ignored(executor: Executor) -> None:
    # The watchdog decides to fire just as the block ends: its signal then lands
    # after the block, while the guest builds or sends the reply. It must be
    # ignored there, not raised (which would kill the REPL and its state).
    assert executor.run_block("n = 1", 5.0).error is False
    signal.raise_signal(signal.SIGUSR1)
    outcome = executor.run_block("print(n + 1)", 5.0)
    assert outcome.stdout.getvalue() == "2\n" and not outcome.error


def test_a_block_past_its_limit_is_interrupted(executor: Executor) -> None:
    outcome = executor.run_block("import time\nwhile True:\n    time.sleep(0.01)", 0.05)
    assert outcome.timed_out and "TimeoutError" in outcome.stderr.getvalue()
    assert executor.run_block("print('alive')", 1.0).stdout.getvalue() == "alive\n"


def test_odd_namespace_keys_do_not_break_the_variable_list(executor: Executor) -> None:
    executor.run_block("globals()[5] = 1\nglobals()['v' * 10_000] = 2\nglobals()[''] = 3\nok = 4",
                       1.0)
    names = executor.user_vars()
    assert "ok" in names and all(0 < len(n) <= 80 for n in names)


def test_a_str_subclass_cannot_break_the_capture_or_the_names(executor: Executor) -> None:
    code = ("class S(str):\n"
            "    def __getitem__(self, k): return 5\n"
            "    def startswith(self, *a): raise RuntimeError\n"
            "    def __hash__(self): raise RuntimeError\n"
            "import sys\nsys.stdout.write(S('shown'))\nglobals()[S('odd')] = 1")
    outcome = executor.run_block(code, 1.0)
    assert outcome.stdout.getvalue() == "shown", outcome.stderr.getvalue()
    assert "S" in executor.user_vars()
