"""clients/node/stream.mjs against the real server, with its packages from the npm registry."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from rlm_service._gen.rlm.v1 import rlm_pb2
from tests.clients.conftest import PROJECT_ROOT, LiveServer, client_env
from tests.conftest import repl

NODE_DIR = PROJECT_ROOT / "clients" / "node"
STREAM = NODE_DIR / "stream.mjs"
ECHO = repl("import json\nprint(llm_query('hi'))\n"
            "FINAL(type(context).__name__ + ' ' + json.dumps(context))")


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.skip("node is not installed: the Node client test needs Node.js 18+ on PATH")
    npm = shutil.which("npm")
    assert npm is not None, "node is installed but npm is not: install npm to fetch the packages"
    # node_modules (git-ignored) is the cache: `npm ci` runs only when the lock file changed.
    lock = (NODE_DIR / "package-lock.json").read_bytes() + (NODE_DIR / "package.json").read_bytes()
    stamp = NODE_DIR / "node_modules" / ".rlm-installed"
    digest = hashlib.sha256(lock).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                                cwd=NODE_DIR, capture_output=True, text=True, timeout=300,
                                check=False)
        assert result.returncode == 0, f"npm ci failed:\n{result.stderr}"
        stamp.write_text(digest)
    return found


def _stream(node: str, *args: str, stdin: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node, str(STREAM), *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env=client_env(), cwd=PROJECT_ROOT, check=False)


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_streams_a_run_as_protobuf_json_lines(node: str, live_server: LiveServer,
                                              tmp_path: Path) -> None:
    live_server.fake.script("MARK-NODE", [ECHO])
    context = tmp_path / "ctx.json"
    context.write_text(json.dumps({"docs": ["a", "b"], "n": 3, "ok": True, "none": None}))
    result = _stream(node, live_server.address, "MARK-NODE what is it", str(context))
    assert result.returncode == 0, result.stderr
    events = _events(result.stdout)
    # Each line is exactly the protobuf JSON mapping with proto field names, as the
    # Python client and grpcurl print it: parse it, print it again, get the same.
    for event in events:
        message = json_format.ParseDict(event, rlm_pb2.CompletionEvent())
        assert json_format.MessageToDict(message, preserving_proto_field_name=True) == event
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    kinds = [next(k for k in e if k not in ("seq", "time")) for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "final_answer"
    assert {"sub_call_started", "sub_call_finished", "code_block"} <= set(kinds)
    final = events[-1]["final_answer"]
    assert final["stop_reason"] == "STOP_REASON_ANSWERED"
    kind, _, body = final["answer"].partition(" ")
    assert kind == "dict"
    assert json.loads(body) == {"docs": ["a", "b"], "n": 3, "ok": True, "none": None}


def test_text_file_and_stdin_contexts(node: str, live_server: LiveServer,
                                      tmp_path: Path) -> None:
    live_server.fake.script("MARK-NODE", [ECHO])
    text = tmp_path / "notes.txt"
    text.write_text("plain text\n")
    for args, stdin, expected in (([str(text)], None, "plain text\n"), (["-"], "from stdin", "from stdin")):
        result = _stream(node, live_server.address, "MARK-NODE echo", *args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert _events(result.stdout)[-1]["final_answer"]["answer"] == \
            "str " + json.dumps(expected)


def test_bad_input_and_no_server(node: str, live_server: LiveServer, tmp_path: Path) -> None:
    refused = _stream(node, live_server.address, "")
    assert refused.returncode == 2
    assert refused.stderr.startswith("stream.mjs: INVALID_ARGUMENT: prompt is required")
    missing = _stream(node, live_server.address, "x", str(tmp_path / "missing.txt"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert _stream(node, live_server.address, "x", str(broken)).returncode == 2
    assert _stream(node).returncode == 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = _stream(node, f"127.0.0.1:{port}", "x")
    assert down.returncode == 4 and down.stderr.startswith("stream.mjs: UNAVAILABLE: ")


def test_sigint_cancels_the_run_on_the_server(node: str, live_server: LiveServer) -> None:
    live_server.fake.script("MARK-NODE-INT", [repl("import time\ntime.sleep(60)")])
    proc = subprocess.Popen([node, str(STREAM), live_server.address, "MARK-NODE-INT"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=client_env())
    try:
        assert proc.stdout is not None
        while '"root_turn"' not in proc.stdout.readline():
            assert proc.poll() is None, "the Node client ended early"
        assert live_server.active_runs() == 1
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    end = time.monotonic() + 5
    while live_server.active_runs() and time.monotonic() < end:
        time.sleep(0.05)
    assert live_server.active_runs() == 0
