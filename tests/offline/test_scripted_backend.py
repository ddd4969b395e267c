"""RLM_BACKEND=scripted through the real server and sandbox: the root writes real
code, the sub-calls answer from their chunks, and nothing is hard-wired."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest

from rlm_service.config import Settings
from rlm_service.models import build_backends
from rlm_service.models.scripted import classify_question, sub_reply
from rlm_service.server import Server
from tests.conftest import StartServer, collect, final_of, of_kind
from tests.offline.support import stub_for

SCRIPTED = {"rlm_backend": "scripted", "rlm_sub_backend": "scripted",
            "gemini_api_key": None, "gemini_base_url": None}


def _haystack(fact: str, lines: int, at: int) -> str:
    rng = random.Random(lines)
    rows = [f"worker-{rng.randint(1, 9)} processed batch {rng.randint(1, 10**6)}"
            for _ in range(lines)]
    rows.insert(at, fact)
    return "\n".join(rows)


async def _run(server: Server, prompt: str, context: object, **fields: object) -> list:  # type: ignore[type-arg]
    async with stub_for(server) as stub:
        return await collect(stub, prompt, context, **fields)


async def test_a_needle_is_found_by_a_multi_step_trajectory(start_server: StartServer) -> None:
    server = await start_server(**SCRIPTED)
    # Two different plantings: the answer follows the data, not the code.
    for code, at in (("ZX-4410", 50_000), ("QQ-0071", 7)):
        context = _haystack(f"note: the gate code for depot orion-4 is: {code}", 120_000, at)
        events = await _run(server, "What is the gate code for depot orion-4?", context)
        final = final_of(events)
        assert final.answer == code
        assert final.iterations == 3
        turns = of_kind(events, "root_turn")
        assert all("offline scripted model" in t.text for t in turns)
        blocks = of_kind(events, "code_block")
        assert [b.error for b in blocks] == [False, False, False]
        assert "llm_query_batched" in blocks[1].code and "FINAL_VAR" in blocks[2].code
        # More than one chunk was read, in parallel sub-calls, plus one extraction call.
        started = of_kind(events, "sub_call_started")
        assert len(started) >= 3
        assert final.total_usage.prompt_tokens > len(context) // 4
        assert final.total_usage.cost_usd == 0.0


async def test_a_list_context_and_a_missing_fact(start_server: StartServer) -> None:
    server = await start_server(**SCRIPTED)
    events = await _run(server, "What is the gate code for depot orion-4?",
                        ["nothing here", "nor here"])
    assert "does not seem to contain" in final_of(events).answer


async def test_oolong_counts_come_from_the_sub_calls_labels(start_server: StartServer) -> None:
    server = await start_server(**SCRIPTED)
    rows = ["Who wrote Hamlet?", "Where is Kyoto?", "Who painted this?", "What does GPS stand for?"]
    context = "\n".join(f"Date: Jan {i % 28 + 1:02d}, 2023 || User: {1000 + i} || Instance: {q}"
                        for i, q in enumerate(rows * 60))
    events = await _run(server, "How many data points should be classified as label "
                        "'human being'? Answer with a number.", context)
    assert final_of(events).answer == "120"
    # 240 rows in groups of 100.
    assert len(of_kind(events, "sub_call_finished")) == 3


async def test_the_iteration_limit_forces_an_answer(start_server: StartServer) -> None:
    server = await start_server(**SCRIPTED)
    events = await _run(server, "What is the gate code for depot orion-4?",
                        "the gate code for depot orion-4 is: 12", max_iterations=2)
    final = final_of(events)
    assert final.forced and final.answer == "12"


def test_sub_model_rules() -> None:
    assert classify_question("Who invented radar?") == "human being"
    assert classify_question("What does NATO stand for?") == "abbreviation"
    assert classify_question("How far is Lisbon from the sea?") == "numeric value"
    assert classify_question("Name a dish people eat in Kyoto.") == "entity"
    assert sub_reply("Tell me a joke").startswith("(offline scripted model)")
    found = sub_reply("Find the sentence in the text below that answers this question: "
                      "What is the code for vega-7?\nReply ...\n\nText:\nvega-7 heartbeat ok\n"
                      "The code for vega-7 is: 99.\nThe code for vega-3 is: 11.")
    assert found == "The code for vega-7 is: 99."


async def test_other_model_names_are_refused_not_billed(start_server: StartServer) -> None:
    server = await start_server(**SCRIPTED)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _run(server, "What is x?", "x is: 1", root_model="gemini-2.5-pro")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "offline scripted backend has one model" in (info.value.details() or "")
    # From the REPL, a sub-call to another model is an error string, not a crash.
    events = await _run(server, "What is the gate code for depot orion-4?",
                        "the gate code for depot orion-4 is: 5", sub_model="gpt-5")
    finished = of_kind(events, "sub_call_finished")
    assert finished and all(f.error and "not served here" in f.error_message for f in finished)


def test_an_unwritable_record_folder_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    settings = Settings(_env_file=None, rlm_backend="scripted",  # type: ignore[call-arg]
                        rlm_record=str(tmp_path / "file" / "tapes"))
    with pytest.raises(ValueError, match=r"RLM_RECORD=.*cannot create it"):
        build_backends(settings)
