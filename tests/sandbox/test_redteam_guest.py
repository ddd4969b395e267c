"""Red-team cases: a hostile or careless guest must not hurt the host or the run.

Each runs the model's code through the real server and the real sandbox, with
the module server of test_redteam (same limits). See issue 14, "Hostile or odd
values from the guest" and "Floods".
"""

from __future__ import annotations

import resource
import time
import uuid

import pytest

from rlm_service.repl.calls import MAX_CALLS_IN_FLIGHT
from rlm_service.repl_guest.protocol import MAX_ANSWER_CHARS
from tests.conftest import collect, final_of, of_kind, repl
from tests.sandbox.test_redteam import (  # noqa: F401  (module fixtures: fake, srv, stub)
    AFTER,
    CTRL,
    assert_healthy,
    assert_restarted,
    attack,
    block,
    fake,
    srv,
    stub,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

EXEC_REPLY = ('{"ok": true, "stdout": "S", "stderr": "", "stdout_total": 1, "stderr_total": 0, '
              '"error": false, "timed_out": false, "duration": 0.1, "final": null, '
              '"partial": "", "vars": []}')


def forged(frame: str) -> str:
    return CTRL + f"""
import os, struct
body = {frame!r}.encode('utf-8', 'surrogatepass')
os.write(ctrl, struct.pack('>I', len(body)) + body)
"""


# --- forged frames: a restart, never INTERNAL ----------------------------------------
@pytest.mark.parametrize("frame", [
    EXEC_REPLY.replace('"stdout_total": 1', '"stdout_total": 1e400'),
    EXEC_REPLY.replace('"stdout_total": 1', '"stdout_total": -5'),
    EXEC_REPLY.replace('"duration": 0.1', '"duration": NaN'),
    EXEC_REPLY.replace('"S"', '"\\ud800"').replace('"vars": []', '"vars": "x"'),
    EXEC_REPLY.replace('"S"', '"ok-\udcff"').replace('"error": false', '"error": 1'),
    EXEC_REPLY.replace('"vars": []', '"vars": ["' + "v" * 2_000_001 + '"]'),
    EXEC_REPLY.replace('"final": null', '"final": {"a": 1}'),
    '{"push": "partial", "content": "\\udfff", "extra": 1}',
    '{"ok": true}',
], ids=["inf-count", "negative-count", "nan-duration", "escaped-surrogate", "raw-surrogate",
        "huge-var-name", "final-object", "push-extra-field", "missing-fields"])
async def test_a_forged_frame_restarts_the_repl(srv, stub, fake, frame: str) -> None:
    events = await attack(stub, fake, forged(frame))
    assert_restarted(events)
    assert "control protocol" in block(events).stderr
    assert max(len(r.last_user_text) for r in fake.requests[-2:]) < 100_000
    await assert_healthy(srv, stub, fake)


# --- the model's own data never kills the guest --------------------------------------
async def test_printing_a_lone_surrogate_keeps_the_repl(srv, stub, fake) -> None:
    events = await attack(stub, fake, "kept = 1\nprint('a\\ud800b')",
                          repl("FINAL(kept + 1)"))
    assert not block(events).repl_restarted
    assert block(events).stdout.strip() == "a\ufffdb"
    assert final_of(events).answer == "2"


async def test_an_answer_with_a_lone_surrogate_is_kept(srv, stub, fake) -> None:
    events = await attack(stub, fake, "FINAL('ok-\\udcff-end')")
    assert final_of(events).answer == "ok-\ufffd-end"
    assert not block(events).repl_restarted


async def test_a_nine_million_nul_partial_answer_is_refused(srv, stub, fake) -> None:
    events = await attack(stub, fake, "kept = 5\nanswer['content'] = '\\0' * 9_000_000",
                          repl("FINAL(kept * 2)"))
    b = block(events)
    assert not b.repl_restarted and b.error and f"{MAX_ANSWER_CHARS:,}" in b.stderr
    assert final_of(events).answer == "10"


async def test_odd_namespace_keys_keep_the_repl(srv, stub, fake) -> None:
    events = await attack(stub, fake, "globals()[5] = 1\nglobals()[''] = 2\nkept = 3",
                          repl("FINAL(kept)"))
    assert not block(events).repl_restarted
    assert final_of(events).answer == "3"


async def test_a_huge_variable_name_does_not_reach_the_prompt(srv, stub, fake) -> None:
    events = await attack(stub, fake, "globals()['v' * 2_000_001] = 1\nsmall = 2")
    assert final_of(events).answer == "after:3"
    second = fake.requests[-1].last_user_text
    assert len(second) < 20_000 and "small" in second


# --- answers over the limit are refused, never cut --------------------------------------
async def test_an_oversize_final_is_refused_with_a_message(srv, stub, fake) -> None:
    events = await attack(stub, fake, f"FINAL('x' * {MAX_ANSWER_CHARS + 1})",
                          repl("FINAL('short')"))
    assert "limit for an answer" in block(events).stderr
    assert final_of(events).answer == "short"
    assert "limit for an answer" in fake.requests[-1].last_user_text


async def test_an_oversize_final_var_is_refused_with_a_message(srv, stub, fake) -> None:
    events = await attack(stub, fake, f"big = 'x' * {MAX_ANSWER_CHARS + 1}",
                          "FINAL_VAR(big)", repl("FINAL('short')"))
    assert final_of(events).answer == "short"
    assert "limit for an answer" in fake.requests[-1].last_user_text


# --- a segfault anywhere ---------------------------------------------------------------
async def test_a_segfault_in_final_var_str_restarts_at_once(srv, stub, fake) -> None:
    events = await attack(stub, fake, """
        import ctypes
        class Bomb:
            def __str__(self):
                ctypes.string_at(0)
        x = Bomb()
        """, "FINAL_VAR(x)", AFTER)
    notices = [n for n in of_kind(events, "notice") if n.kind == "repl_restarted"]
    assert len(notices) == 1
    # The block after FINAL_VAR ran in the fresh REPL: not reported as crashed.
    assert [b.repl_restarted for b in of_kind(events, "code_block")] == [False, False]
    assert final_of(events).answer == "after:3"
    assert "gave no answer" in fake.requests[-1].last_user_text
    await assert_healthy(srv, stub, fake)


# --- floods that would cost the host ----------------------------------------------------
async def test_a_child_writing_yes_costs_the_service_little_cpu(srv, stub, fake) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF)
    events = await attack(stub, fake, "import subprocess\nsubprocess.run(['yes'])")
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    b = block(events)
    assert b.timed_out and b.truncated and "not read" in b.stdout
    # The block runs for the 2 s timeout; reading the flood cost about as much CPU.
    assert cpu < 0.8, f"the service spent {cpu:.2f} s of CPU on the flood"
    assert final_of(events).answer == "after:3"


async def test_many_empty_files_in_tmp_replace_the_repl(srv, stub, fake) -> None:
    cap = srv.settings.sandbox_tmp_files
    events = await attack(stub, fake, f"""
        import os
        for i in range({cap * 3}):
            open(f'/tmp/f{{i}}', 'w').close()
        print('all made')
        """)
    assert_restarted(events)
    assert "files" in block(events).stderr and "all made" not in block(events).stdout
    await assert_healthy(srv, stub, fake)


async def test_calls_in_flight_are_capped_per_repl(srv, stub, fake) -> None:
    fake.model_latency["fake-sub"] = 0.5
    try:
        events = await attack(stub, fake, f"""
            import threading
            out = []
            def one():
                out.append(llm_query('p'))
            threads = [threading.Thread(target=one) for _ in range({MAX_CALLS_IN_FLIGHT + 8})]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            refused = [r for r in out if 'in flight' in r]
            print(len(out), len(refused))
            """)
    finally:
        fake.model_latency.pop("fake-sub", None)
    total, refused = map(int, block(events).stdout.split())
    assert total == MAX_CALLS_IN_FLIGHT + 8 and refused >= 1
    await assert_healthy(srv, stub, fake)


async def test_the_service_still_serves_after_all_this(srv, stub, fake) -> None:
    marker = f"RT-{uuid.uuid4().hex}"
    fake.script(marker, [repl("FINAL('fine')")])
    started = time.monotonic()
    assert final_of(await collect(stub, f"{marker} go", "ctx")).answer == "fine"
    assert time.monotonic() - started < 10
