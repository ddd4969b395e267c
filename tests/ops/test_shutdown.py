"""Graceful shutdown of the real ``rlm-server`` entry point, as root and as a plain user.

The server runs as a subprocess (its own session), talks to the fake Gemini of
this test process over HTTP, and is stopped with SIGTERM like Cloud Run does.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from tests.conftest import process_tree, repl
from tests.fakes.gemini import FakeGemini
from tests.ops.conftest import (
    PROJECT_ROOT,
    SITE_PACKAGES,
    ServerProcess,
    StartProc,
    alive,
    guest_pids,
    port_open,
    runtime_dirs,
    wait_for,
)

GRACE = 1.5


class Stream:
    """One StreamCompletion consumed by a thread; events are kept with arrival times."""

    def __init__(self, target: str, prompt: str, context: Any = "ctx", **fields: Any) -> None:
        self.events: list[tuple[float, rlm_pb2.CompletionEvent]] = []
        self.error: grpc.RpcError | None = None
        self.ended_at: float | None = None
        self.done = threading.Event()
        self._channel = grpc.insecure_channel(target)
        stub = rlm_pb2_grpc.RLMServiceStub(self._channel)
        self._call = stub.StreamCompletion(make_request(prompt, context, **fields), timeout=60)
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        try:
            for event in self._call:
                self.events.append((time.monotonic(), event))
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.done.set()

    def kinds(self) -> list[str]:
        return [str(e.WhichOneof("event")) for _, e in self.events]

    def first(self, kind: str) -> tuple[float, Any] | None:
        for at, e in self.events:
            if e.WhichOneof("event") == kind:
                return at, getattr(e, kind)
        return None

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)
        self._channel.close()


def new_run_code(target: str) -> grpc.StatusCode | None:
    """The status a fresh run gets (None if it was accepted)."""
    with grpc.insecure_channel(target) as channel:
        stub = rlm_pb2_grpc.RLMServiceStub(channel)
        try:
            for _ in stub.StreamCompletion(make_request("MARK-LATE hi", "ctx"), timeout=3):
                return None
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return None


def sandbox_of(proc: ServerProcess) -> set[int]:
    """Every descendant of the server process (bwrap, setpriv, guest interpreters)."""
    return process_tree(proc.pid) - {proc.pid}


def assert_clean_exit(proc: ServerProcess, sandbox: set[int], tmpdir: Path, sigterm_at: float, within: float = 5.0) -> None:
    rc = proc.wait_exit(timeout=max(0.1, sigterm_at + within - time.monotonic()) + 2)
    took = time.monotonic() - sigterm_at
    assert rc == 0, (rc, proc.stderr[-20:])
    assert took < within, f"exit took {took:.2f} s"
    assert not proc.stderr, proc.stderr  # nothing but JSON logs, and those go to stdout
    # No process of the sandbox outlives the server.
    assert sandbox, "the server had no sandbox processes to check"
    assert alive(sandbox) == set(), alive(sandbox)
    assert alive(guest_pids(tmpdir)) == set()
    # The runtime dir (callback socket, run dirs) is gone.
    assert runtime_dirs(tmpdir) == []
    logs = proc.logs()
    assert logs[-1]["message"] == "rlm-service stopped", logs[-3:]
    assert not port_open(proc.port) and not port_open(proc.metrics_port)


def wait_block_running(stream: Stream, fake: FakeGemini, marker: str) -> None:
    """Until the root turn was answered, so its REPL block is executing."""
    wait_for(lambda: stream.first("root_turn") or stream.done.is_set(), 10)
    assert not stream.done.is_set(), (stream.kinds(), stream.error)
    assert any(marker in r.first_user_text for r in fake.requests)
    time.sleep(0.3)


def test_sigterm_ends_a_long_run_and_cleans_up(server_proc: StartProc, fake_gemini: FakeGemini,
                                               world_tmp: Path) -> None:
    proc = server_proc()
    assert len(runtime_dirs(world_tmp)) == 1
    fake_gemini.script("MARK-LONG", [repl("import time\ntime.sleep(60)\nFINAL('never')")])
    stream = Stream(proc.target(), "MARK-LONG sleep a while")
    try:
        wait_block_running(stream, fake_gemini, "MARK-LONG")
        # The busy REPL plus the pool's replacement, each a bwrap tree.
        def two_repls() -> set[int] | None:
            pids = sandbox_of(proc)
            return pids if len(pids & guest_pids(world_tmp)) >= 2 else None

        sandbox = wait_for(two_repls, 10)

        sigterm_at = time.monotonic()
        proc.terminate()

        # Health flips (or the port closes) at once; new runs are refused.
        wait_for(lambda: proc.health() in ("NOT_SERVING", "UNAVAILABLE"), 2.0)
        assert new_run_code(proc.target()) == grpc.StatusCode.UNAVAILABLE

        # The long run ends with an error event when the grace period is over.
        assert stream.done.wait(GRACE + 2.0), stream.kinds()
        assert stream.ended_at is not None and stream.ended_at - sigterm_at < GRACE + 2.0
        error = stream.first("error")
        assert error is not None, stream.kinds()
        at, body = error
        assert stream.kinds()[-1] == "error"
        assert body.code == "UNAVAILABLE" and "shutting down" in body.message, body
        # ... not before the grace period (the run was given its chance).
        assert at - sigterm_at >= GRACE - 0.1, at - sigterm_at
        assert stream.error is not None
        assert stream.error.code() == grpc.StatusCode.UNAVAILABLE
        assert stream.first("final_answer") is None

        assert_clean_exit(proc, sandbox, world_tmp, sigterm_at)
        warn = [r for r in proc.logs() if r["message"].startswith("ending 1 runs")]
        assert warn and warn[0]["severity"] == "WARNING"
    finally:
        stream.close()


def test_run_in_progress_at_sigterm_finishes_within_grace(
        server_proc: StartProc, fake_gemini: FakeGemini, world_tmp: Path) -> None:
    proc = server_proc()
    fake_gemini.script("MARK-SHORT", [
        repl("import time\ntime.sleep(0.6)\nFINAL('short done')")])
    stream = Stream(proc.target(), "MARK-SHORT quick one")
    try:
        wait_block_running(stream, fake_gemini, "MARK-SHORT")
        sandbox = sandbox_of(proc)
        sigterm_at = time.monotonic()
        proc.terminate()
        assert new_run_code(proc.target()) == grpc.StatusCode.UNAVAILABLE
        assert stream.done.wait(GRACE + 1.0)
        assert stream.error is None, stream.error
        assert stream.kinds()[-1] == "final_answer", stream.kinds()
        final = stream.events[-1][1].final_answer
        assert final.answer == "short done" and not final.forced
        assert stream.first("error") is None
        assert stream.events[-1][0] - sigterm_at < GRACE
        assert_clean_exit(proc, sandbox, world_tmp, sigterm_at)
        assert not any(r["message"].startswith("ending ") for r in proc.logs())
    finally:
        stream.close()


NONROOT_UID = 10001
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"


def _nonroot_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to drop to uid 10001 with setpriv"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return (f"{SYSTEM_PYTHON} is missing: the venv's interpreter links into /root/.pyenv, "
                "which uid 10001 cannot read, and no world-readable Python "
                f"{sys.version_info.major}.{sys.version_info.minor} exists")
    if not SITE_PACKAGES.is_dir():
        return f"{SITE_PACKAGES} not found"
    if any(not os.stat(p).st_mode & 0o001 for p in SITE_PACKAGES.parents):
        # tests/sandbox/test_setup_anywhere.py covers a non-root user's own home.
        return f"uid {NONROOT_UID} cannot reach {SITE_PACKAGES} (a folder above it is private)"
    return None


@pytest.mark.skipif(_nonroot_skip_reason() is not None, reason=str(_nonroot_skip_reason()))
def test_entry_point_runs_as_non_root_user(server_proc: StartProc, fake_gemini: FakeGemini,
                                           world_tmp: Path) -> None:
    argv = ["setpriv", f"--reuid={NONROOT_UID}", f"--regid={NONROOT_UID}", "--clear-groups",
            SYSTEM_PYTHON, "-c", "from rlm_service.cli import server_main; server_main()"]
    proc = server_proc(argv, HOME=str(world_tmp), PYTHONPATH=f"{SITE_PACKAGES}:{PROJECT_ROOT}")
    with open(f"/proc/{proc.pid}/status") as f:
        uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {str(NONROOT_UID)}, uids
    ready = proc.wait_log("rlm-service listening")
    assert "uid" not in ready["sandbox_layers"] and "userns-uid" in ready["sandbox_layers"]
    assert not [r for r in proc.logs() if "WITHOUT" in r["message"]]

    fake_gemini.script("MARK-USER", [repl("import os\nFINAL(f'uid={os.getuid()}')")])
    stream = Stream(proc.target(), "MARK-USER who am i")
    try:
        assert stream.done.wait(15), stream.kinds()
        assert stream.error is None, stream.error
        assert stream.kinds()[-1] == "final_answer", stream.kinds()
        # userns-uid: a uid of its own inside its user namespace (the service's on the host).
        uid = int(stream.events[-1][1].final_answer.answer.removeprefix("uid="))
        assert uid != NONROOT_UID and 200_000 <= uid < 210_000, uid
        sandbox = sandbox_of(proc)
        sigterm_at = time.monotonic()
        proc.terminate()
        assert_clean_exit(proc, sandbox, world_tmp, sigterm_at)
    finally:
        stream.close()
