"""Running a trajectory through our service: one gRPC stream per run, timed at the client."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.trajectories import Scenario
from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc

CHANNEL_OPTIONS = [("grpc.max_send_message_length", 1 << 30),
                   ("grpc.max_receive_message_length", 1 << 30)]


@dataclass
class Run:
    """One run as the client saw it: seconds from sending the request."""

    total: float = 0.0
    first_event: float | None = None
    first_root_turn: float | None = None
    first_output: float | None = None  # first code_block event
    answer: str = ""
    error: str = ""
    events: list[rlm_pb2.CompletionEvent] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not self.error


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


async def run_once(stub: rlm_pb2_grpc.RLMServiceAsyncStub, scenario: Scenario, context: Any = "ctx",
                   prompt: str | None = None, keep_events: bool = False) -> Run:
    request = make_request(prompt or scenario.prompt(), context, max_depth=scenario.max_depth,
                           max_iterations=50)
    run = Run()
    started = time.perf_counter()
    try:
        async for event in stub.StreamCompletion(request):
            now = time.perf_counter() - started
            if run.first_event is None:
                run.first_event = now
            if run.first_root_turn is None and event.HasField("root_turn"):
                run.first_root_turn = now
            if run.first_output is None and event.HasField("code_block"):
                run.first_output = now
            if event.HasField("final_answer"):
                run.answer = event.final_answer.answer
            if event.HasField("error"):
                run.error = f"{event.error.code}: {event.error.message}"[:300]
            if keep_events:
                run.events.append(event)
    except grpc.aio.AioRpcError as exc:
        run.error = f"{exc.code().name}: {exc.details()}"[:300]
    run.total = time.perf_counter() - started
    if not run.error and scenario.expected and run.answer != scenario.expected:
        run.error = f"wrong answer {run.answer[:80]!r}, expected {scenario.expected!r}"
    return run
