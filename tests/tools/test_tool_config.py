"""A bad tool setting stops the server at start-up with a message saying what is wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rlm_service.server import Server
from rlm_service.tools import ToolCallFailed, ToolConfigError
from rlm_service.tools.http_call import HttpToolClient
from rlm_service.tools.http_config import AllowList, read_http_tools
from tests.fakes.gemini import FakeGemini
from tests.support.settings import make_settings
from tests.support.subprocess_server import StartProc, runtime_dirs

pytestmark = pytest.mark.timeout(120)

GOOD_TOOL = {"name": "lookup", "description": "Looks things up.",
             "url": "http://127.0.0.1:9/lookup"}


async def refused(fake: FakeGemini, **overrides: Any) -> str:
    server = Server(make_settings(fake, **overrides))
    with pytest.raises(ToolConfigError) as err:
        await server.start()
    return str(err.value)


def module(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    os.chmod(path, 0o644)
    return str(path)


def tools_file(folder: Path, tools: Any) -> str:
    path = folder / "tools.json"
    path.write_text(tools if isinstance(tools, str) else json.dumps(tools))
    return str(path)


async def test_a_bad_tools_module_fails_start_up(fake_gemini: FakeGemini,
                                                 world_tmp: Path) -> None:
    doc = '    """Doc."""\n'
    cases = {
        str(world_tmp / "nope.py"): "does not exist",
        module(world_tmp, "broken.py", "def f(:\n"): "has a syntax error at line 1",
        module(world_tmp, "bare.py", "def f():\n    pass\n\ndef _g():\n" + doc):
            "defines no public function with a docstring",
        module(world_tmp, "json.py", "def f():\n" + doc): "taken by the standard library",
        module(world_tmp, "clash.py", "def llm_query(p):\n" + doc): "is a built-in REPL name",
        module(world_tmp, "hides.py", "def print(x):\n" + doc): "would hide Python's built-in",
        module(world_tmp, "notes.txt", "hello"): "neither a .py file nor a package folder",
    }
    for path, message in cases.items():
        assert message in await refused(fake_gemini, tools_module=path), path


async def test_a_module_that_fails_in_the_sandbox_fails_start_up(
        fake_gemini: FakeGemini, world_tmp: Path) -> None:
    # Fine for ast; its import needs what the sandbox does not have.
    path = module(world_tmp, "needy.py", "import not_installed_anywhere\n\n"
                  'def f():\n    """Doc."""\n')
    message = await refused(fake_gemini, tools_module=path)
    assert "does not work in the sandbox" in message
    assert "No module named 'not_installed_anywhere'" in message


async def test_bad_http_tools_fail_start_up(fake_gemini: FakeGemini, world_tmp: Path) -> None:
    allowed = {"http_tools_allowed_hosts": "127.0.0.1"}
    cases: list[tuple[Any, dict[str, str], str]] = [
        ("{not json", allowed, "is not valid JSON"),
        ([], allowed, "must hold a non-empty list of tools"),
        ([GOOD_TOOL], {}, "calls 127.0.0.1:9, which is not on HTTP_TOOLS_ALLOWED_HOSTS"),
        ([{**GOOD_TOOL, "url": "http://evil.example/x"}], allowed,
         "calls evil.example:80, which is not on HTTP_TOOLS_ALLOWED_HOSTS"),
        ([GOOD_TOOL], {"http_tools_allowed_hosts": "127.0.0.1:8000"}, "not on HTTP_TOOLS"),
        ([{**GOOD_TOOL, "url": "file:///etc/passwd"}], allowed, "must be an http:// or"),
        ([{**GOOD_TOOL, "parameters": {"type": "object", "properties": {"a": {"type": 5}}}}],
         allowed, "lookup's parameters is not a valid JSON Schema"),
        ([{**GOOD_TOOL, "parameters": {"type": "string"}}], allowed, '"type": "object"'),
        ([{**GOOD_TOOL, "methd": "GET"}], allowed, "unknown keys ['methd']"),
        ([GOOD_TOOL, GOOD_TOOL], allowed, "the name 'lookup' is used twice"),
        ([{**GOOD_TOOL, "name": "FINAL"}], allowed, "the name 'FINAL' is used twice"),
        ([{**GOOD_TOOL, "timeout_seconds": 0}], allowed, "'timeout_seconds' must be"),
        ([{**GOOD_TOOL, "description": ""}], allowed, "'description' must be"),
    ]
    for tools, more, message in cases:
        text = await refused(fake_gemini, http_tools_file=tools_file(world_tmp, tools), **more)
        assert message in text, (tools, text)
        assert "HTTP_TOOLS_FILE" in text
    assert "not a host" in await refused(fake_gemini, http_tools_allowed_hosts="a/b, c")
    assert "CHILD_RUN_TOOLS names ['ghost']" in await refused(
        fake_gemini, child_run_tools="ghost",
        http_tools_file=tools_file(world_tmp, [GOOD_TOOL]), **allowed)


async def test_the_allow_list_is_checked_again_at_call_time(world_tmp: Path) -> None:
    tools = read_http_tools(tools_file(world_tmp, [GOOD_TOOL]), AllowList("127.0.0.1"), 5.0,
                            set())
    client = HttpToolClient(AllowList("127.0.0.1:8000"), 1000)
    with pytest.raises(ToolCallFailed, match="not on the service's allow-list"):
        client.check(tools["lookup"], "{}")
    assert HttpToolClient(AllowList("127.0.0.1"), 1000).check(tools["lookup"], "{}") == b"{}"
    await client.aclose()


def test_rlm_server_exits_with_the_message(server_proc: StartProc, world_tmp: Path) -> None:
    proc = server_proc(ready=False, HTTP_TOOLS_FILE=tools_file(world_tmp, [GOOD_TOOL]))
    assert proc.wait_exit(timeout=60) != 0
    assert any(line.startswith("rlm-server: HTTP_TOOLS_FILE") and "not on HTTP_TOOLS_ALLOWED"
               in line for line in proc.stderr), proc.stderr
    assert not any("Traceback" in line for line in proc.stderr), proc.stderr
    assert not runtime_dirs(world_tmp)
