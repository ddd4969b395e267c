"""The real server in a thread of its own, and the clients as real subprocesses.

The client tests drive programs (``rlm``, ``node``, ``grpcurl``) that block while
the server answers, so the server runs on its own event loop in a background
thread rather than on the test's loop; the tests themselves are plain functions.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pyte
import pytest

from rlm_service.server import Server
from tests.conftest import make_settings, process_tree, sandbox_pids
from tests.fakes.gemini import FakeGemini

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RLM = BIN / "rlm"
COLUMNS, ROWS = 120, 60
# Cursor movement, colours, and the other CSI / OSC sequences rich writes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[=>()][0-9A-Za-z]?")


@dataclass
class LiveServer:
    server: Server
    fake: FakeGemini
    loop: asyncio.AbstractEventLoop

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def active_runs(self) -> int:
        engine = self.server.engine
        assert engine is not None
        return len(engine.active)


class _ServerThread:
    def __init__(self, fake: FakeGemini, overrides: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rlm-server",
                                       daemon=True)
        self.thread.start()
        self.server = Server(make_settings(fake, **overrides))

    def call(self, coro: Any, timeout: float) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=timeout)

    def close(self) -> None:
        try:
            self.call(self.server.stop(grace=0), timeout=20)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()


@pytest.fixture(scope="module")
def _shared_server() -> Iterator[LiveServer]:
    # One server per test module: starting one (sandbox probe, REPL pool) costs a second
    # or two, more than most of these tests. Scripts are keyed by per-test markers. Never
    # two at once: servers of one process share its REPL cgroup parent, and the first
    # to stop removes it.
    with FakeGemini() as fake:
        thread = _ServerThread(fake, {"http_port": -1})
        try:
            thread.call(thread.server.start(), timeout=60)
            yield LiveServer(thread.server, fake, thread.loop)
        finally:
            thread.close()


@pytest.fixture
def live_server(_shared_server: LiveServer) -> Iterator[LiveServer]:
    """The module's real server, with the fake model's latency and faults reset after
    each test and no run of that test left running."""
    yield _shared_server
    fake = _shared_server.fake
    fake.latency = 0.0
    fake.model_latency.clear()
    fake.clear_faults()
    end = time.monotonic() + 10
    while _shared_server.active_runs() and time.monotonic() < end:
        time.sleep(0.02)
    assert _shared_server.active_runs() == 0, "a run outlived its test"


def client_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's RLM_ADDR, and a terminal rich can draw on."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RLM_ADDR", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    env.update(TERM="xterm-256color", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def run_rlm(*args: str, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``rlm`` with pipes: not a terminal, so plain lines (or JSON)."""
    return subprocess.run([str(RLM), *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=client_env(), cwd=PROJECT_ROOT, check=False)


def spawn_rlm(*args: str, timeout: float = 30) -> pexpect.spawn:
    """``rlm`` on a pseudo-terminal of COLUMNS x ROWS: the live view."""
    return pexpect.spawn(str(RLM), list(args), encoding="utf-8", timeout=timeout,
                         dimensions=(ROWS, COLUMNS), env=client_env(), cwd=str(PROJECT_ROOT))


def finish(child: pexpect.spawn, timeout: float = 30) -> tuple[str, int]:
    """Everything the program wrote, and its exit status, once it exits."""
    child.expect(pexpect.EOF, timeout=timeout)
    child.close()
    output = str(child.before or "")
    if child.signalstatus is not None:
        return output, 128 + int(child.signalstatus)
    return output, int(child.exitstatus)


def plain(raw: str) -> str:
    """Terminal output without escape sequences or carriage returns."""
    return _ANSI.sub("", raw).replace("\r", "")


def screen(raw: str) -> list[str]:
    """What a terminal of COLUMNS x ROWS shows after ``raw``, trailing blanks trimmed."""
    emulated = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.Stream(emulated)
    stream.feed(raw)
    lines = [line.rstrip() for line in emulated.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def our_guests() -> set[int]:
    """Sandboxed REPL processes started by this test process (not other sessions')."""
    return sandbox_pids() & process_tree(os.getpid())
