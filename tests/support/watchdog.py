"""A pytest plugin that ends a test run which hangs after its session has finished.

Per-test hangs are pytest-timeout's (``timeout`` in pyproject.toml). What it cannot
see is a hang after the last test: a grpc.aio server that was never stopped joins
its poller thread when it is garbage-collected at unconfigure, and a non-daemon
thread keeps the interpreter from exiting. Either way the run would never end; in
CI that is a job killed after its time limit instead of a failure.

When the session finishes, a daemon thread is armed: if the process is still alive
``RLM_TEST_EXIT_GRACE`` seconds later (default 30), it prints the stacks of every
thread and exits with the session's status (1 if the session passed: a hang is a
bug). faulthandler backs it up in case the hang holds the GIL. Nested sessions
(pytester), pytest-xdist workers and ``RLM_TEST_EXIT_GRACE=0`` leave it off.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time

import pytest

MESSAGE = "exit watchdog: the test run did not exit"
_armed = False


def _grace() -> float:
    try:
        return float(os.environ.get("RLM_TEST_EXIT_GRACE", "30"))
    except ValueError:
        return 30.0


def _fire(grace: float, status: int, fd: int) -> None:
    time.sleep(grace)
    out = os.fdopen(fd, "w", closefd=False)
    names = [f"{t.name}{'' if t.daemon else ' (non-daemon)'}" for t in threading.enumerate()]
    out.write(f"\n{MESSAGE} {grace:g} s after the session finished; threads: "
              f"{', '.join(names)}. Stacks:\n")
    out.flush()
    faulthandler.dump_traceback(file=out, all_threads=True)
    out.flush()
    os._exit(status or 1)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _armed
    grace = _grace()
    if _armed or grace <= 0 or threading.current_thread() is not threading.main_thread():
        return
    if hasattr(session.config, "workerinput"):
        # A worker whose share is done waits for the others; the controller's own
        # watchdog covers a hang of the whole run.
        return
    _armed = True
    # Our own copy of stderr: pytest's capture and faulthandler plugins close theirs.
    fd = os.dup(sys.__stderr__.fileno() if sys.__stderr__ is not None else 2)
    threading.Thread(target=_fire, args=(grace, int(exitstatus), fd),
                     name="exit-watchdog", daemon=True).start()
    # If the hang holds the GIL the thread above never runs; the C watchdog still does.
    faulthandler.dump_traceback_later(grace + 10, exit=True, file=os.fdopen(fd, "w", closefd=False))
