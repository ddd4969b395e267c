"""The in-sandbox REPL driven directly, for timing races a whole run cannot aim at."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator

import pytest

from rlm_service.repl_guest.main import Guest


@pytest.fixture
def guest() -> Iterator[Guest]:
    ours, theirs = socket.socketpair()
    guest = Guest(ours, max_output=1000)
    guest.ns.update(answer={"content": "", "ready": False})
    previous = signal.signal(signal.SIGUSR1, guest.on_timer_signal)
    try:
        yield guest
    finally:
        signal.signal(signal.SIGUSR1, previous)
        ours.close()
        theirs.close()


def test_a_late_timer_signal_is_ignored(guest: Guest) -> None:
    # The watchdog decides to fire just as the block ends: its signal then lands
    # after the block, while the guest builds or sends the reply. It must be
    # ignored there, not raised (which would kill the REPL and its state).
    assert guest._exec("n = 1", 5.0)["error"] is False
    signal.raise_signal(signal.SIGUSR1)
    reply = guest._exec("print(n + 1)", 5.0)
    assert reply["stdout"] == "2\n" and not reply["error"]


def test_a_block_past_its_limit_is_interrupted(guest: Guest) -> None:
    reply = guest._exec("import time\nwhile True:\n    time.sleep(0.01)", 0.05)
    assert reply["timed_out"] and "TimeoutError" in reply["stderr"]
    assert guest._exec("print('alive')", 1.0)["stdout"] == "alive\n"
