"""An ordinary client cancel is not an error: nothing is logged at ERROR for it."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from rlm_client import make_request
from tests.fakes.gemini import FakeGemini
from tests.support.events import repl
from tests.support.servers import StartServer, open_stub


# "waiting": the cancel lands while the run waits for its next event (inside the
# handler's generators). "writing": the client stops reading, so the server is blocked
# writing an event (outside them) when the cancel lands.
@pytest.mark.parametrize("while_", ["waiting", "writing"])
async def test_client_cancel_logs_no_error(start_server: StartServer, fake_gemini: FakeGemini,
                                           caplog: pytest.LogCaptureFixture, while_: str) -> None:
    server = await start_server(max_output_chars=1_000_000)
    marker = f"MARK-CANCEL-LOG-{while_}"
    if while_ == "waiting":
        turns = [repl("print('step')"), repl("import time\ntime.sleep(30)")]
    else:
        # Far more than the HTTP/2 flow-control windows hold.
        turns = [repl("print('x' * 990_000)")] * 25
    fake_gemini.script(marker, [*turns, repl("FINAL('no')")])
    engine = server.engine
    assert engine is not None
    with caplog.at_level(logging.INFO):
        async with open_stub(server) as stub:
            call = stub.StreamCompletion(make_request(f"{marker} go", "ctx"))
            async for event in call:
                if event.HasField("code_block"):
                    break
            if while_ == "writing":
                await asyncio.sleep(3.0)
            call.cancel()
        await asyncio.wait_for(engine.wait_idle(), 10.0)
        # Whatever is left of the handler's generators is collected now, not later.
        gc.collect()
        await asyncio.sleep(0.2)
    messages = [r.getMessage() for r in caplog.records]
    # While writing, the run's pump may have produced every event (and the run ended)
    # before the cancel lands: then there is nothing left to cancel, and no ERROR either.
    if while_ == "waiting":
        assert "client cancelled the run" in messages, messages
    errors = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
