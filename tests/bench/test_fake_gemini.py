"""The bench's fake Gemini process: routing by trajectory, fixed latency, control routes.

It is driven with the real google-genai SDK, as both systems under test drive it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from google import genai
from google.genai import types

from bench.procs import API_KEY, FakeProc
from bench.trajectories import CHILD, TURNS5


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProc]:
    with FakeProc(0.0) as proc:
        yield proc


def client(url: str) -> genai.Client:
    return genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=url))


def test_root_child_and_sub_requests_get_their_turns(fake: FakeProc) -> None:
    fake.reset()
    c = client(fake.url)
    root = c.models.generate_content(model="fake-root", contents=TURNS5.prompt())
    assert root.text == TURNS5.turns[0]
    # Two model turns in the history: the third turn of the script comes back.
    history = [types.Content(role="user", parts=[types.Part(text=TURNS5.prompt())]),
               types.Content(role="model", parts=[types.Part(text="a")]),
               types.Content(role="user", parts=[types.Part(text="out")]),
               types.Content(role="model", parts=[types.Part(text="b")]),
               types.Content(role="user", parts=[types.Part(text="out")])]
    assert c.models.generate_content(model="fake-root", contents=history).text == TURNS5.turns[2]
    child = c.models.generate_content(
        model="fake-sub", contents="child 1",
        config=types.GenerateContentConfig(system_instruction="you are an RLM"))
    assert child.text == CHILD[0]
    sub = c.models.generate_content(model="fake-sub", contents="item 7")
    assert sub.text == "ok:item 7"
    stats = fake.stats()
    assert stats["kinds"] == {"root": 2, "child": 1, "sub": 1}
    assert stats["requests"] == 4 and stats["handler_seconds"] > 0


def test_latency_is_applied_and_validated(fake: FakeProc) -> None:
    c = client(fake.url)
    fake.set_latency(0.3)
    try:
        started = time.perf_counter()
        c.models.generate_content(model="fake-sub", contents="x")
        assert time.perf_counter() - started >= 0.3
    finally:
        fake.set_latency(0.0)
    for bad in ("s=-1", "s=abc", ""):
        req = urllib.request.Request(f"{fake.url}/_bench/latency?{bad}", method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 400
        assert "error" in json.loads(err.value.read())
