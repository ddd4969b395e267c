"""RLM_RECORD writes every model call; RLM_BACKEND=replay plays a cassette back so the
run's events are the recorded ones again (modulo times and ids)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import grpc
import pytest

from evals.cassettes import first_difference, normalise
from rlm_client.events import read_events
from rlm_service.config import Settings
from rlm_service.models.cassette import CassetteError, CassetteWriter, ReplayBackend
from tests.conftest import SUB_MODEL, StartServer, collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini
from tests.offline.support import stub_for

CASSETTES = Path(__file__).resolve().parents[1] / "cassettes"
REPLAY = {"rlm_backend": "replay", "rlm_sub_backend": "replay",
          "gemini_api_key": None, "gemini_base_url": None}


async def _replay(start_server: StartServer, cassette: Path, request: dict) -> list:  # type: ignore[type-arg]
    server = await start_server(**REPLAY, rlm_replay_cassette=str(cassette))
    async with stub_for(server) as stub:
        return await collect(stub, request["prompt"], request["context"], **request["fields"])


@pytest.mark.parametrize("name", ["niah-scripted", "pairs-scripted"])
async def test_a_shipped_cassette_replays_to_the_recorded_events(
        start_server: StartServer, name: str) -> None:
    folder = CASSETTES / name
    request = json.loads((folder / "request.json").read_text())
    # Recorded from the scripted model, which like a replay answers at once: even the
    # order of concurrent sub-calls is reproduced.
    recorded = normalise(read_events(folder / "events.jsonl"), sort_sub_calls=False)
    try:
        events = await _replay(start_server, folder / "cassette.jsonl", request)
    except grpc.aio.AioRpcError as exc:
        pytest.fail(f"{exc.details()}\nIf the prompts or the loop changed on purpose, record "
                    f"the cassette again: .venv/bin/python -m evals.cassettes rerecord {folder}")
    replayed = normalise(events, sort_sub_calls=False)
    assert first_difference(recorded, replayed) is None
    assert len(replayed) > 5 and "final_answer" in replayed[-1]


async def test_a_changed_reply_is_caught_where_the_run_parts_from_the_recording(
        start_server: StartServer, tmp_path: Path) -> None:
    folder = CASSETTES / "niah-scripted"
    request = json.loads((folder / "request.json").read_text())
    edited = []
    for line in (folder / "cassette.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("reply", {}).get("text", "").strip().isdigit():  # the extraction call
            entry["reply"]["text"] = "7"
        edited.append(json.dumps(entry))
    (tmp_path / "c.jsonl").write_text("\n".join(edited) + "\n")
    # The REPL now prints another answer, so the next root request is one never recorded.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _replay(start_server, tmp_path / "c.jsonl", request)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = info.value.details() or ""
    # Message 5 is the REPL output of the work step (1 task, 2 model turns, 2 outputs).
    assert "message 5 differs" in details
    recorded, now = (int(n.replace(",", "")) for n in
                     re.findall(r"(?:recorded|now) ([\d,]+) characters", details))
    assert recorded - now == 6  # a 7-digit number became "7" in 'answer so far: ...'



async def test_a_request_the_cassette_never_saw_fails_clearly(start_server: StartServer) -> None:
    folder = CASSETTES / "niah-scripted"
    request = json.loads((folder / "request.json").read_text())
    request["prompt"] = "A different question?"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _replay(start_server, folder / "cassette.jsonl", request)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "replay: no recorded reply" in (info.value.details() or "")
    assert "message 1 differs" in (info.value.details() or "")


async def test_recording_a_gemini_run_then_replaying_it(
        start_server: StartServer, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    """The recorder sits behind the real Gemini backend (SDK -> fake over HTTP)."""
    fake_gemini.script("MARK-REC", [
        repl("parts = context.split('|')\nprint(len(parts))"),
        repl("out = llm_query_batched([f'upper: {p}' for p in parts])\nprint(out)"),
        repl("summary = ' / '.join(out)\nFINAL_VAR('summary')"),
    ])
    server = await start_server(rlm_record=str(tmp_path / "tape"))
    async with stub_for(server) as stub:
        original = await collect(stub, "MARK-REC join them", "a|b|c", timeout_seconds=60)
    tapes = list((tmp_path / "tape").glob("*.jsonl"))
    assert [t.stem for t in tapes] == [final_of(original).request_id]
    calls = [json.loads(line) for line in tapes[0].read_text().splitlines()][1:]
    assert len(calls) == 3 + 3  # three root turns, three sub-calls
    assert {c["backend"] for c in calls} == {"gemini"}
    assert sum(c["request"]["model"] == SUB_MODEL for c in calls) == 3
    await server.stop(grace=0)
    fake_gemini.reset_stats()

    replayed = await _replay(start_server, tapes[0], {
        "prompt": "MARK-REC join them", "context": "a|b|c", "fields": {"timeout_seconds": 60}})
    assert fake_gemini.requests == []  # nothing went to the model
    assert first_difference(normalise(original), normalise(replayed)) is None
    assert final_of(replayed).answer == final_of(original).answer
    assert len(of_kind(replayed, "sub_call_finished")) == 3


def test_a_broken_cassette_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"cassette": 1}\nnot json\n')
    settings = Settings(_env_file=None, rlm_backend="replay",  # type: ignore[call-arg]
                        rlm_replay_cassette=str(tmp_path / "bad.jsonl"))
    with pytest.raises(CassetteError, match=r"bad\.jsonl:2: not JSON"):
        ReplayBackend.from_settings(settings)
    with pytest.raises(CassetteError, match="cannot read"):
        ReplayBackend.from_settings(settings.model_copy(
            update={"rlm_replay_cassette": str(tmp_path / "missing.jsonl")}))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CassetteError, match="no cassettes"):
        ReplayBackend.from_settings(settings.model_copy(update={"rlm_replay_cassette": str(empty)}))
    shutil.rmtree(empty)


def test_cassettes_are_private_to_the_service_user(tmp_path: Path) -> None:
    writer = CassetteWriter(tmp_path)
    writer.write("scripted", {"model": "m", "options": {}, "messages": []},
                 {"reply": {"text": "t", "usage": {}}})
    (path,) = tmp_path.iterdir()
    assert path.stat().st_mode & 0o777 == 0o600
