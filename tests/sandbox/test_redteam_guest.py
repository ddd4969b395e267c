"""Red-team cases: a hostile or careless guest must not hurt the host or the run.

Each runs the model's code through the real server and the real sandbox, with the
helpers of test_redteam and a module server of its own (a low tmpfs file cap).
See issue 14, "Hostile or odd values from the guest" and "Floods".
"""

from __future__ import annotations

import os
import resource
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import pytest_asyncio

from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from rlm_service.repl.calls import MAX_CALLS_IN_FLIGHT
from rlm_service.repl_guest.protocol import MAX_ANSWER_CHARS
from rlm_service.server import Server
from tests.conftest import final_of, make_settings, of_kind, repl
from tests.fakes._common import Req
from tests.fakes.gemini import FakeGemini
from tests.sandbox.test_redteam import (
    AFTER,
    CTRL,
    MAX_OUTPUT,
    assert_healthy,
    assert_restarted,
    attack,
    block,
    code,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

BLOCK_TIMEOUT = 3.0
TMP_FILES = 3_000


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as f:
        yield f


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(fake: FakeGemini) -> AsyncIterator[Server]:
    server = Server(make_settings(
        fake, sandbox_block_timeout_seconds=BLOCK_TIMEOUT, sandbox_tmp_files=TMP_FILES,
        sandbox_pool_size=2, max_output_chars=MAX_OUTPUT,
        sandbox_uid_base=900_000 + (os.getpid() % 400) * 1_000, sandbox_uid_count=1_000,
    ))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stub(srv: Server) -> AsyncIterator[rlm_pb2_grpc.RLMServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        yield rlm_pb2_grpc.RLMServiceStub(channel)

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
def bytes_read() -> int:
    """What this process (the service) has read through read(2) and the like."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


async def test_a_child_writing_yes_is_not_drained_by_the_service(srv, stub, fake) -> None:
    read_before = bytes_read()
    before = resource.getrusage(resource.RUSAGE_SELF)
    events = await attack(stub, fake, "import subprocess\nsubprocess.run(['yes'])")
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    read = bytes_read() - read_before
    # For the block's 3 s, `yes` writes hundreds of MB; the service used to read and
    # drop all of it, at up to a core's worth of CPU.
    assert read < 20_000_000, f"the service read {read:,} bytes of the flood ({cpu:.2f} s CPU)"
    b = block(events)
    assert b.timed_out and b.truncated and "not read" in b.stdout
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


async def test_files_from_many_short_blocks_add_up(srv, stub, fake) -> None:
    # Each block is over before the first check while it runs; the check at its end
    # still counts.
    step = repl(code(f"""
        import os
        n = globals().get('n', 0) + 1
        for i in range({TMP_FILES // 2}):
            open(f'/tmp/{{n}}-{{i}}', 'w').close()
        """))
    events = await attack(stub, fake, "n = 0", step, step, step, AFTER)
    restarted = [b for b in of_kind(events, "code_block") if b.repl_restarted]
    assert restarted and "files" in restarted[0].stderr
    assert final_of(events).answer == "after:3"


async def test_calls_in_flight_are_capped_per_repl(srv, stub, fake) -> None:
    fake.model_latency["fake-sub"] = 0.5
    try:
        events = await attack(stub, fake, f"""
            import threading
            out = []
            start = threading.Barrier({MAX_CALLS_IN_FLIGHT + 8})
            def one():
                start.wait()
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
    assert len(block(events).stdout.split()) == 2, block(events)
    total, refused = map(int, block(events).stdout.split())
    assert total == MAX_CALLS_IN_FLIGHT + 8 and refused >= 1
    await assert_healthy(srv, stub, fake)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_callback_connections_are_capped_per_repl(srv, stub, fake) -> None:
    seen: dict[str, int] = {}

    def second_turn(req: Req) -> str:
        # The REPL still holds every connection it opened; the service is this process.
        seen["fds"] = open_fds()
        return repl("for s in socks:\n    s.close()\nFINAL(llm_query('ping'))")

    baseline = open_fds()
    events = await attack(stub, fake, """
        import os, socket, stat, time
        path = next(os.path.join(d, f) for d, _, files in os.walk('/rlm') for f in files
                    if stat.S_ISSOCK(os.stat(os.path.join(d, f)).st_mode))
        socks = []
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            socks.append(s)
        for s in socks:
            s.setblocking(False)
        # The host refuses past its cap by closing; on a busy machine that takes a moment.
        deadline = time.monotonic() + 10
        while True:
            closed = 0
            for s in socks:
                try:
                    closed += s.recv(1, socket.MSG_PEEK) == b''
                except BlockingIOError:
                    pass
            if closed >= 200 - 16 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        print(closed)
        """, second_turn)
    assert int(block(events).stdout) >= 200 - 16, block(events)
    assert seen["fds"] - baseline < 80, "the service kept the REPL's connections open"
    # Once it let them go, its own calls work again.
    assert final_of(events).answer == fake.sub_answer("ping")
    await assert_healthy(srv, stub, fake)
