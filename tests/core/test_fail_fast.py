"""A failing fixture never leaves the test run hanging.

Each case runs pytest in a subprocess on a generated test file, with the same
plugins the suite uses, and checks that the run ends by itself, quickly, with the
failure reported and nothing of the server left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.procs import guest_pids
from tests.support.subprocess_server import PROJECT_ROOT
from tests.support.watchdog import MESSAGE

# From the end of the child's session to its exit. Measured from there, not from its
# start: on a loaded 2-core machine pytest alone can take 20 s to import.
EXIT_WITHIN = 8.0
# A run that has not ended by then is hung (without the fixes, it never ends).
HUNG_AFTER = 180.0

# A plugin for the child that notes when its session finished.
EXIT_CLOCK = '''
import os
import time


def pytest_sessionfinish(session, exitstatus):
    with open(os.environ["EXIT_CLOCK_FILE"], "w") as f:
        f.write(repr(time.time()))
'''

HALF_STARTED = '''
import socket

import pytest

from rlm_service.server import Server
from tests.fakes.gemini import FakeGemini
from tests.support.settings import make_settings


@pytest.fixture
def busy_port():
    # Taken, so the HTTP face (started after gRPC, the callback server and the REPL
    # pool) cannot bind it: the server's start fails half way.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
async def unguarded(busy_port):
    # The pattern that used to hang the suite: start() outside any try/finally.
    with FakeGemini() as fake:
        server = Server(make_settings(fake, http_port=busy_port))
        await server.start()
        yield server
        await server.stop(grace=0)


@pytest.fixture
async def shared(start_server, busy_port):
    return await start_server(http_port=busy_port)


async def test_unguarded(unguarded):
    pass


async def test_shared_fixture(shared):
    pass
'''

NON_DAEMON_THREAD = '''
import threading

_never = threading.Event()


def test_leaves_a_thread_behind():
    threading.Thread(target=_never.wait, name="left-behind").start()
'''


def run_pytest(tmp: Path, source: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Runs pytest on ``source``; returns the result and the seconds from the end of
    its session to its exit."""
    plugins = tmp / "plugins"
    plugins.mkdir()
    (plugins / "exit_clock.py").write_text(textwrap.dedent(EXIT_CLOCK))
    test_file = tmp / "test_generated_case.py"
    test_file.write_text(textwrap.dedent(source))
    clock = tmp / "session-finished"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-c", str(PROJECT_ROOT / "pyproject.toml"), "--rootdir", str(PROJECT_ROOT),
            "-p", "tests.support.servers", "-p", "tests.support.watchdog", "-p", "exit_clock",
            str(test_file)]
    child_env = {**os.environ, "TMPDIR": str(tmp), "EXIT_CLOCK_FILE": str(clock),
                 "PYTHONPATH": str(plugins), **env}
    try:
        done = subprocess.run(argv, cwd=PROJECT_ROOT, env=child_env, capture_output=True,
                              text=True, timeout=HUNG_AFTER, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the pytest run hung (killed after {exc.timeout} s):\n{exc.stdout!r}\n"
                    f"{exc.stderr!r}")
    exited = time.time()
    assert clock.exists(), done.stdout + done.stderr
    return done, exited - float(clock.read_text())


def test_a_server_that_fails_half_way_does_not_hang_the_run(world_tmp: Path) -> None:
    done, elapsed = run_pytest(world_tmp, HALF_STARTED)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "2 errors" in done.stdout, output
    assert "address already in use" in output.lower() or "errno 98" in output.lower(), output
    # It ended on its own: the watchdog did not have to step in.
    assert MESSAGE not in output
    assert elapsed < EXIT_WITHIN, f"exited {elapsed:.1f} s after its session"
    # The half-started servers took down what they had started: REPLs and runtime dirs.
    assert not guest_pids(under=world_tmp)
    assert not list(world_tmp.glob("rlm-service-*"))


def test_the_watchdog_ends_a_run_a_thread_keeps_alive(tmp_path: Path) -> None:
    done, elapsed = run_pytest(tmp_path, NON_DAEMON_THREAD, RLM_TEST_EXIT_GRACE="2")
    output = done.stdout + done.stderr
    assert "1 passed" in done.stdout, output
    assert MESSAGE in done.stderr and "left-behind (non-daemon)" in done.stderr, output
    # A passing session that cannot exit is a failure.
    assert done.returncode == 1, output
    assert elapsed < EXIT_WITHIN, f"exited {elapsed:.1f} s after its session"
