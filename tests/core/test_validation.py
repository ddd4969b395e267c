"""Bad requests get INVALID_ARGUMENT with a message a user can act on."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2
from tests.conftest import collect, final_of, repl
from tests.fakes.gemini import FakeGemini


def _number_context() -> rlm_pb2.CompletionRequest:
    req = rlm_pb2.CompletionRequest(prompt="q")
    req.context.number_value = 3
    return req


def _null_context() -> rlm_pb2.CompletionRequest:
    req = rlm_pb2.CompletionRequest(prompt="q")
    req.context.null_value = struct_pb2.NULL_VALUE
    return req


BAD = {
    "empty prompt": (rlm_pb2.CompletionRequest(prompt=""), "prompt is required"),
    "blank prompt": (rlm_pb2.CompletionRequest(prompt="  \n"), "prompt is required"),
    "number context": (_number_context(), "context must be a string, a list or an object"),
    "null context": (_null_context(), "context must be a string, a list or an object"),
    "negative iterations": (make_request("q", "c", max_iterations=-1), "max_iterations"),
    "too many iterations": (make_request("q", "c", max_iterations=100_000), "max_iterations"),
    "negative depth": (make_request("q", "c", max_depth=-2), "max_depth"),
    "deep depth": (make_request("q", "c", max_depth=99), "max_depth"),
    "negative calls": (make_request("q", "c", max_llm_calls=-1), "max_llm_calls"),
    "negative tokens": (make_request("q", "c", max_total_tokens=-5), "max_total_tokens"),
    "negative cost": (make_request("q", "c", max_cost_usd=-0.5), "max_cost_usd"),
    "nan cost": (make_request("q", "c", max_cost_usd=float("nan")), "max_cost_usd"),
    "huge timeout": (make_request("q", "c", timeout_seconds=1e9), "timeout_seconds"),
    "bad model": (make_request("q", "c", root_model="bad model; rm -rf"), "root_model"),
    "bad temperature": (make_request(
        "q", "c", root_options=rlm_pb2.ModelOptions(temperature=5)), "temperature"),
}


@pytest.mark.parametrize("name", list(BAD))
async def test_bad_request_is_invalid_argument(stub, fake_gemini: FakeGemini, name: str) -> None:
    request, message = BAD[name]
    for method in (stub.Complete, stub.StreamCompletion):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            call = method(request)
            if method is stub.StreamCompletion:
                [e async for e in call]
            else:
                await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.details()
        assert "Traceback" not in info.value.details()
    assert not fake_gemini.requests, "a bad request must not reach the model"


async def test_server_still_serves_after_bad_requests(stub, fake_gemini: FakeGemini) -> None:
    for request, _ in BAD.values():
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Complete(request)
    fake_gemini.script("MARK-OK", [repl("FINAL('fine')")])
    assert final_of(await collect(stub, "MARK-OK", "c")).answer == "fine"


async def test_root_model_failure_is_a_clean_status(stub, fake_gemini: FakeGemini) -> None:
    from tests.fakes.gemini import Fault

    fake_gemini.inject(Fault.BAD_REQUEST_400, count=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(make_request("MARK-FAIL", "c"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Traceback" not in info.value.details()
    assert "test-key" not in info.value.details()
    fake_gemini.clear_faults()
    fake_gemini.inject(Fault.UNAVAILABLE_503, count=50)
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for e in stub.StreamCompletion(make_request("MARK-FAIL2", "c")):
            events.append(e)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert events[-1].HasField("error") and events[-1].error.code == "UNAVAILABLE"
