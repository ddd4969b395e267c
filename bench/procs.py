"""The processes a benchmark runs: the fake model and our server, each its own process.

Both start in a session of their own so that stopping one ends exactly its
tree; /proc readers for peak memory live here too.
"""

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
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.procs import process_tree

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)
RLM_SERVER = PYTHON.parent / "rlm-server"
API_KEY = "bench-key-not-a-secret"
ROOT_MODEL = "fake-root"
SUB_MODEL = "fake-sub"
# Variables of the developer's shell that would change how the server behaves.
_SCRUBBED = ("OTEL_", "GEMINI_", "OPENAI_", "RLM_", "SANDBOX_", "LOG_", "GOOGLE_", "K_SERVICE",
             "PORT", "METRICS_", "HTTP_", "SHUTDOWN_", "RUNTIME_DIR", "MAX_", "BATCH_",
             "CHILD_", "DEFAULT_", "MODEL_")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}


class _Proc:
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class FakeProc(_Proc):
    """``bench.fake_gemini`` in its own process."""

    def __init__(self, latency: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [str(PYTHON), "-m", "bench.fake_gemini", "--latency", str(latency)],
            cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True, env=clean_env())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("the fake Gemini process exited before it listened")
        self.url: str = json.loads(line)["url"]

    def _call(self, path: str, method: str = "GET") -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST"
                                     else None)
        with urllib.request.urlopen(req, timeout=10) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body

    def stats(self) -> dict[str, Any]:
        return self._call("/_bench/stats")

    def reset(self) -> None:
        self._call("/_bench/reset", "POST")

    def set_latency(self, seconds: float) -> None:
        self._call(f"/_bench/latency?s={seconds}", "POST")


class ServerProc(_Proc):
    """``rlm-server`` against the fake; ``settings`` are env overrides (PORT=...)."""

    def __init__(self, fake_url: str, **settings: str | int) -> None:
        # Sandbox uids must traverse the runtime dir's parents; pytest-style 0700 dirs won't do.
        self.tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-", dir="/tmp"))
        os.chmod(self.tmp, 0o777)
        self.port = free_port()
        env = clean_env()
        env.update({
            "PORT": str(self.port), "HOST": "127.0.0.1", "METRICS_PORT": str(free_port()),
            "METRICS_HOST": "127.0.0.1", "HTTP_PORT": "-1",
            "GEMINI_BASE_URL": fake_url, "GEMINI_API_KEY": API_KEY,
            "GEMINI_MODEL_NAME": ROOT_MODEL, "GEMINI_SUB_MODEL_NAME": SUB_MODEL,
            "LOG_LEVEL": "WARNING", "SHUTDOWN_GRACE_SECONDS": "1", "TMPDIR": str(self.tmp),
            "MAX_ITERATIONS_LIMIT": "200",
        })
        env.update({k.upper(): str(v) for k, v in settings.items()})
        self.log = (self.tmp / "server.log").open("wb")
        self.proc = subprocess.Popen([str(RLM_SERVER)], env=env, cwd=self.tmp, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < end:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rlm-server exited: {self.tail()}")
                with contextlib.suppress(grpc.RpcError):
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                time.sleep(0.05)
        raise RuntimeError(f"rlm-server not serving after {timeout} s: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return (self.tmp / "server.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        super().stop()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- /proc -----------------------------------------------------------------------

def children_of(pid: int) -> set[int]:
    """Every live descendant of ``pid``."""
    return process_tree(pid) - {pid}


def status_kb(pid: int, key: str) -> int:
    """``VmRSS``/``VmHWM`` of a process in KiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def is_guest(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return False
    return b"rlm_service.repl_guest" in cmd and comm != "bwrap"


class PeakSampler:
    """Samples the peak RSS of a server and of its largest REPL guest while a run goes."""

    def __init__(self, server_pid: int, interval: float = 0.02) -> None:
        self.server_pid = server_pid
        self.interval = interval
        self.guest_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in children_of(self.server_pid):
                if is_guest(pid):
                    self.guest_kb = max(self.guest_kb, status_kb(pid, "VmHWM"))
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def server_kb(self) -> int:
        return status_kb(self.server_pid, "VmHWM")
