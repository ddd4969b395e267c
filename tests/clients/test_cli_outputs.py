"""``rlm run`` off a terminal: plain lines, ``--json``, and every kind of ``--context-file``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from rlm_service._gen.rlm.v1 import rlm_pb2
from tests.clients.conftest import LiveServer, run_rlm
from tests.conftest import repl

# The REPL reports what the sandbox got as `context`, so the test sees the server's view.
ECHO = repl("import json\nFINAL(type(context).__name__ + ' ' + json.dumps(context))")


def _json_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_plain_lines_off_a_terminal(live_server: LiveServer) -> None:
    live_server.fake.script("MARK-PLAIN", [
        repl("print('first line')\nprint(llm_query('hello'))"),
        repl("FINAL('done')")])
    result = run_rlm("run", "MARK-PLAIN go", "--server", live_server.address)
    assert result.returncode == 0, result.stderr
    # Only the answer on stdout, so `answer=$(rlm run ...)` works.
    assert result.stdout == "done\n"
    lines = result.stderr.splitlines()
    assert lines[0].startswith("run started: fake-root (sub fake-sub), context str 0 chars")
    assert "  | first line" in lines and "  | sub<5>:hello" in lines
    assert any(line.startswith("  llm_query ") and "started: hello" in line for line in lines)
    assert any(line.startswith("  sub-call ") and " done in " in line for line in lines)
    assert lines[-1].startswith("answered · 2 iterations · 3 calls · ")
    assert "\x1b[" not in result.stdout + result.stderr


def test_json_prints_one_event_per_line_and_nothing_else(live_server: LiveServer) -> None:
    live_server.fake.script("MARK-JSON", [repl("print(llm_query('x'))\nFINAL('ok')")])
    result = run_rlm("run", "MARK-JSON go", "--server", live_server.address, "--json")
    assert result.returncode == 0, result.stderr
    events = _json_events(result.stdout)
    # Each line is a whole CompletionEvent in the proto-name JSON mapping.
    for event in events:
        json_format.ParseDict(event, rlm_pb2.CompletionEvent())
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    kinds = [next(k for k in e if k not in ("seq", "time")) for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "final_answer"
    assert {"root_turn", "code_block", "sub_call_started", "sub_call_finished"} <= set(kinds)
    assert events[-1]["final_answer"]["answer"] == "ok"
    assert result.stderr == ""


def _answer_for(server: LiveServer, *args: str, stdin: str | None = None) -> str:
    server.fake.script("MARK-CTX", [ECHO])
    result = run_rlm("run", "MARK-CTX what is it", "--server", server.address, "--json",
                     *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    answer: str = _json_events(result.stdout)[-1]["final_answer"]["answer"]
    return answer


def test_context_file_text(live_server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("line one\nligne deux é\n", encoding="utf-8")
    assert _answer_for(live_server, "--context-file", str(path)) == \
        "str " + json.dumps("line one\nligne deux é\n")


@pytest.mark.parametrize("value", [["a", 1, None, {"k": [True]}], {"doc": "x", "n": 2.5}])
def test_context_file_json_list_or_object(live_server: LiveServer, tmp_path: Path,
                                          value: Any) -> None:
    path = tmp_path / "ctx.json"
    path.write_text(json.dumps(value), encoding="utf-8")
    kind, _, body = _answer_for(live_server, "--context-file", str(path)).partition(" ")
    assert kind == type(value).__name__
    # Protobuf's Struct carries numbers as doubles, so 1 arrives as 1.0.
    assert json.loads(body) == value


def test_context_folder_is_a_sorted_list_of_its_texts(live_server: LiveServer,
                                                      tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.md").write_text("first", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.log").write_text("third", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("hidden", encoding="utf-8")
    assert _answer_for(live_server, "-c", str(tmp_path)) == 'list ["first", "second", "third"]'


def test_context_from_stdin(live_server: LiveServer) -> None:
    assert _answer_for(live_server, "--context-file", "-", stdin="piped in\n") == \
        'str "piped in\\n"'
