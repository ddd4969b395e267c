"""``rlm-server`` as a real subprocess, with its output collected, and the fixtures
that start it (every process started is killed, its whole session, at teardown)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fakes.gemini import FakeGemini
from tests.support.procs import wait_for
from tests.support.settings import API_KEY, ROOT_MODEL, SUB_MODEL

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV = PROJECT_ROOT / ".venv"
RLM_SERVER = VENV / "bin" / "rlm-server"
SITE_PACKAGES = VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"

# Variables of the developer's shell that would change how the server behaves.
_SCRUBBED_PREFIXES = ("OTEL_", "GEMINI_", "OPENAI_", "RLM_", "SANDBOX_", "LOG_", "GOOGLE_",
                      "K_SERVICE", "K_REVISION", "PORT", "METRICS_", "SHUTDOWN_", "RUNTIME_DIR",
                      "PYTHONPATH")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- the server as a subprocess ------------------------------------------------

class ServerProcess:
    """``rlm-server`` in a subprocess; stdout and stderr lines are collected by threads."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.port = int(env["PORT"])
        self.metrics_port = int(env["METRICS_PORT"])
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        # A session of its own: cleanup can kill exactly this tree, by its id.
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            t = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            with self._cond:
                sink.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        stream.close()

    def logs(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as JSON (fails on a line that is not)."""
        with self._cond:
            lines = list(self.stdout)
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AssertionError(f"stdout line is not JSON: {line!r}") from exc
            assert isinstance(record, dict), line
            out.append(record)
        return out

    def wait_log(self, message: str, timeout: float = 45.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.stdout:
                    if message in line:
                        with contextlib.suppress(json.JSONDecodeError):
                            record = json.loads(line)
                            if record.get("message") == message:
                                return dict(record)
                left = end - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    break
                self._cond.wait(min(left, 0.1))
        raise AssertionError(f"no log {message!r}; exit={self.proc and self.proc.poll()}\n"
                             f"stdout={self.stdout[-20:]}\nstderr={self.stderr[-20:]}")

    def wait_ready(self, timeout: float = 45.0) -> None:
        self.wait_log("rlm-service listening", timeout)
        wait_for(lambda: self.health() == "SERVING", 5.0)

    def health(self, timeout: float = 0.5) -> str:
        """``SERVING``/``NOT_SERVING``/... or the gRPC error code name if the call failed."""
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            except grpc.RpcError as exc:
                return str(exc.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self) -> None:
        os.kill(self.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def kill_tree(self) -> None:
        """Cleanup: whatever is left of the session this test started."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        for t in self._threads:
            t.join(2)


def base_env(fake: FakeGemini, tmpdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.update({
        "PORT": str(free_port()), "METRICS_PORT": str(free_port()), "HOST": "127.0.0.1",
        "METRICS_HOST": "127.0.0.1", "HTTP_PORT": str(free_port()), "HTTP_HOST": "127.0.0.1",
        "GEMINI_BASE_URL": fake.base_url, "GEMINI_API_KEY": API_KEY,
        "GEMINI_MODEL_NAME": ROOT_MODEL, "GEMINI_SUB_MODEL_NAME": SUB_MODEL,
        "SHUTDOWN_GRACE_SECONDS": "1.5", "SANDBOX_POOL_SIZE": "1",
        "MODEL_RETRY_BASE_SECONDS": "0.01", "MODEL_RETRY_MAX_SECONDS": "0.05",
        # The runtime dir (mkdtemp) lands here, so the test can see it go away.
        "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def runtime_dirs(tmpdir: Path) -> list[Path]:
    return sorted(tmpdir.glob("rlm-service-*"))


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temp dir every uid can traverse (the sandbox uids reach their run dirs through it;
    pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="rlm-ops-", dir="/tmp"))
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


StartProc = Callable[..., ServerProcess]


@pytest.fixture
def server_proc(fake_gemini: FakeGemini, world_tmp: Path) -> Iterator[StartProc]:
    """``server_proc(argv=None, **env)`` starts ``rlm-server`` and waits until it is SERVING.

    Every process started is killed (its whole session) at teardown.
    """
    started: list[ServerProcess] = []

    def start(argv: list[str] | None = None, ready: bool = True, **env: str) -> ServerProcess:
        proc = ServerProcess(argv or [str(RLM_SERVER)], base_env(fake_gemini, world_tmp, **env),
                             cwd=world_tmp)
        started.append(proc)
        proc.start()
        if ready:
            proc.wait_ready()
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.kill_tree()
