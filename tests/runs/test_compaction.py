"""Compaction: a long scripted history crosses the threshold, one summary call
(visible as a notice, counted in usage) replaces the older turns, and the run goes
on with its REPL variables intact."""

from __future__ import annotations

from rlm_service.run.compaction import SUMMARY_HEADER
from tests.conftest import collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini, Req
from tests.recursion import open_stub


def _turn(req: Req) -> str:
    if "Write a compact note" in req.last_user_text:
        return "NOTE: v0 and v1 hold 3000 x each. Plan: report the variables."
    if SUMMARY_HEADER in str(req.contents):
        return repl("names = sorted(k for k in globals() if k[:1] == 'v' and k[1:].isdigit())\n"
                    "FINAL(f'{names} {len(v0) + len(v1)}')")
    return repl(f"v{req.model_turns} = 'x' * 3000\nprint(v{req.model_turns})")


async def test_a_long_history_is_compacted_and_the_run_goes_on(
        start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server(model_input_limits_json={"fake-root": 4000},
                                compaction_threshold=0.5)
    fake_gemini.script("MARK-COMPACT", [_turn])
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-COMPACT go", "ctx")
    final = final_of(events)
    assert final.answer == "['v0', 'v1'] 6000"  # the REPL kept every variable
    notices = {n.kind: n for n in of_kind(events, "notice")}
    assert "history_compacted" in notices and "history_trimmed" not in notices
    assert "NOTE: v0 and v1" in notices["history_compacted"].message
    calls = fake_gemini.calls_for("fake-root")
    summary = [c for c in calls if "Write a compact note" in c.last_user_text]
    assert len(summary) == 1
    # The summary call saw the old turns; the call after it no longer carries them.
    assert "x" * 3000 in summary[0].last_user_text
    last = calls[-1]
    assert SUMMARY_HEADER in str(last.contents)
    assert str(last.contents).count("x" * 3000) == 1  # only the newest output is left
    # It is a model call like any other: in the usage, against the budgets.
    assert final.total_usage.calls == len(calls) == 4


async def test_off_by_default(start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server(model_input_limits_json={"fake-root": 4000})
    fake_gemini.script("MARK-NOCOMPACT", [
        repl("v0 = 'x' * 3000\nprint(v0)"), repl("v1 = 'y' * 3000\nprint(v1)"),
        repl("FINAL('done')")])
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-NOCOMPACT go", "ctx")
    assert final_of(events).answer == "done"
    assert not [n for n in of_kind(events, "notice") if n.kind == "history_compacted"]
