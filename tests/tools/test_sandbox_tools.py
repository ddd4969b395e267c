"""The tools module: listed to the model from its source, run inside the sandbox."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ROOT_MODEL, collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini
from tests.support.servers import StartServer, open_stub
from tests.tools.conftest import TOOLS_SOURCE

pytestmark = pytest.mark.timeout(120)

CODE = (
    "print(shout('hi', times=2))\n"
    "me = whoami()\n"
    "print('file', me['file'])\n"
    "print('uid', me['uid'])\n"
    "print(scribble())\n"
    "try:\n"
    "    open(me['file'], 'a')\n"
    "except OSError as exc:\n"
    "    print('direct write', type(exc).__name__)\n"
    "x = 1"
)


async def test_tools_are_listed_and_run_in_the_sandbox(
        start_server: StartServer, fake_gemini: FakeGemini, tools_module: Path) -> None:
    # Writable by anyone on the host: only the read-only mount stops a write.
    os.chmod(tools_module, 0o666)
    server = await start_server(tools_module=str(tools_module))
    fake_gemini.script("MARK-SBX", [repl(CODE), "FINAL(done)"])
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-SBX go", "ctx")
    assert final_of(events).answer == "done"

    system = fake_gemini.calls_for(ROOT_MODEL)[0].system_instruction or ""
    assert "Operator tools" in system
    assert "- shout(text: str, times: int=1) -> str: Upper-cases TEXT, TIMES times over." \
        in system
    assert "whoami() -> dict" in system and "scribble() -> str" in system
    assert "_hidden" not in system and "undocumented" not in system

    block = of_kind(events, "code_block")[0]
    assert not block.error, block.stderr
    out = block.stdout.splitlines()
    assert out[0] == "HI HI"
    layers = set(of_kind(events, "run_started")[0].sandbox_layers)
    if "namespaces" in layers:
        assert out[1] == "file /opt/rlm/tools/optools.py"
    if "uid" in layers or "userns-uid" in layers:
        assert out[2] != "uid 0"  # the tool runs as the REPL's uid
    if "readonly-fs" in layers:
        # Neither the tool nor the model's own code can change the mounted module
        # (EROFS, a plain OSError, not the uid's PermissionError).
        assert out[3] == "refused: OSError"
        assert out[4] == "direct write OSError"
    assert tools_module.read_text() == TOOLS_SOURCE
    # The tools are built-in names, not the model's variables.
    second = fake_gemini.calls_for(ROOT_MODEL)[1].last_user_text
    assert "REPL variables: me, x" in second


async def test_without_tools_the_prompt_and_repl_have_none(
        start_server: StartServer, fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.script("MARK-NONE", [repl("print('shout' in dir(), 'ToolError' in dir())"),
                                     "FINAL(done)"])
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-NONE go", "ctx")
    assert of_kind(events, "code_block")[0].stdout.strip() == "False False"
    assert "Operator tools" not in (fake_gemini.calls_for(ROOT_MODEL)[0].system_instruction
                                    or "")
