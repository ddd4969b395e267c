"""Every exit code of ``rlm run`` / ``rlm replay``, as scripts see them."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.conftest import PROJECT_ROOT, RLM, LiveServer, client_env, run_rlm
from tests.conftest import repl
from tests.fakes.gemini import Fault


def test_0_answered(live_server: LiveServer) -> None:
    live_server.fake.script("MARK-OK", [repl("FINAL('yes')")])
    result = run_rlm("run", "MARK-OK", "--server", live_server.address)
    assert (result.returncode, result.stdout) == (0, "yes\n"), result.stderr


def test_3_forced_at_the_iteration_limit(live_server: LiveServer) -> None:
    live_server.fake.script("MARK-LOOP", [repl("print('still looking')")])
    result = run_rlm("run", "MARK-LOOP", "--server", live_server.address,
                     "--max-iterations", "2")
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1].startswith("forced at the iteration limit · ")


def test_3_partial_when_a_budget_stops_the_run(live_server: LiveServer) -> None:
    live_server.fake.script("MARK-BUDGET", [repl(
        "answer['content'] = 'best so far'\nprint(llm_query_batched(['a', 'b', 'c', 'd']))")])
    result = run_rlm("run", "MARK-BUDGET", "--server", live_server.address,
                     "--max-llm-calls", "2")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "best so far\n"
    assert result.stderr.splitlines()[-1].startswith("stopped by max LLM calls · ")


def test_3_partial_when_the_timeout_stops_the_run(live_server: LiveServer) -> None:
    live_server.fake.script("MARK-SLOW", [repl(
        "answer['content'] = 'half done'\nimport time\ntime.sleep(30)")])
    started = time.monotonic()
    result = run_rlm("run", "MARK-SLOW", "--server", live_server.address, "--timeout", "1")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "half done\n"
    assert result.stderr.splitlines()[-1].startswith("stopped by the timeout · ")
    assert time.monotonic() - started < 15


def test_2_server_says_invalid_argument(live_server: LiveServer) -> None:
    result = run_rlm("run", "anything", "--server", live_server.address, "--max-depth", "99")
    assert result.returncode == 2
    assert "rlm: INVALID_ARGUMENT: max_depth must be between" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.txt", None, "No such file or directory"),
    ("latin1.txt", b"caf\xe9", "not UTF-8 text"),
    ("broken.json", b'{"a": ', "invalid JSON at line 1"),
    ("number.json", b"42", "must be a list, an object or a string"),
])
def test_2_unreadable_context_file(tmp_path: Path, name: str, content: bytes | None,
                                   message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    # No server is needed: the file is refused before any call.
    result = run_rlm("run", "x", "--server", "127.0.0.1:1", "--context-file", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"rlm: {path}: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_2_empty_folder_and_unwritable_save(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_rlm("run", "x", "--server", "127.0.0.1:1", "-c", str(tmp_path / "empty"))
    assert result.returncode == 2 and "the folder has no files" in result.stderr
    result = run_rlm("run", "x", "--server", "127.0.0.1:1",
                     "--save", str(tmp_path / "no" / "such" / "dir.jsonl"))
    assert result.returncode == 2 and "cannot write" in result.stderr


def test_2_replay_of_a_file_that_is_not_a_run(tmp_path: Path) -> None:
    path = tmp_path / "junk.jsonl"
    path.write_text('{"run_started": {}}\nnot json\n', encoding="utf-8")
    result = run_rlm("replay", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"rlm: {path}:2: not a CompletionEvent")
    assert run_rlm("replay", str(tmp_path / "missing.jsonl")).returncode == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_4_unavailable_with_a_saved_error_that_replays_the_same(tmp_path: Path) -> None:
    saved = tmp_path / "down.jsonl"
    result = run_rlm("run", "x", "--server", f"127.0.0.1:{_closed_port()}", "--save", str(saved))
    assert result.returncode == 4
    assert result.stderr.startswith("rlm: UNAVAILABLE: ")
    assert json.loads(saved.read_text())["error"]["code"] == "UNAVAILABLE"
    replayed = run_rlm("replay", str(saved))
    assert replayed.returncode == 4
    assert replayed.stderr.splitlines()[-1].startswith("failed: UNAVAILABLE · ")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts TCP connections and never answers: a hung server or proxy."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_4_deadline_passed(silent_server: int) -> None:
    result = run_rlm("run", "x", "--server", f"127.0.0.1:{silent_server}", "--timeout", "0.2",
                     timeout=20)
    assert result.returncode == 4
    assert result.stderr.startswith("rlm: DEADLINE_EXCEEDED: ")


def test_4_run_failed(live_server: LiveServer) -> None:
    live_server.fake.inject(Fault.UNAUTHORIZED_401, count=10)
    result = run_rlm("run", "x", "--server", live_server.address)
    assert result.returncode == 4, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("failed: ") and "INVALID_ARGUMENT" not in last
    assert "test-key-must-never-leak" not in result.stdout + result.stderr


def test_help_documents_the_exit_codes() -> None:
    for args in (["--help"], ["run", "--help"], ["replay", "--help"]):
        text = run_rlm(*args).stdout
        for line in ("0    answered by the model", "3    answer forced", "2    bad input",
                     "4    the service is unavailable"):
            assert line in text, (args, text)


def test_130_interrupt_off_a_terminal_cancels_the_run(live_server: LiveServer) -> None:
    live_server.fake.script("MARK-INT", [repl("import time\ntime.sleep(60)")])
    proc = subprocess.Popen([str(RLM), "run", "MARK-INT", "--server", live_server.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=client_env())
    try:
        assert proc.stderr is not None
        # Plain lines arrive as events do; the root turn means the block is about to run.
        while "iteration 1:" not in proc.stderr.readline():
            assert proc.poll() is None, "rlm ended early"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "rlm: cancelled" in err and "Traceback" not in err
    end = time.monotonic() + 5
    while live_server.active_runs() and time.monotonic() < end:
        time.sleep(0.05)
    assert live_server.active_runs() == 0


def test_readme_documents_the_same_exit_codes_as_help() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8").replace("`", "")
    help_text = run_rlm("run", "--help").stdout
    rows = re.findall(r"^  (\d+) +(.+)$", help_text[help_text.index("exit codes:"):], re.MULTILINE)
    assert [code for code, _ in rows] == ["0", "3", "2", "4", "130"]
    for code, meaning in rows:
        assert f"| {code} | {meaning} |" in readme, (code, meaning)
