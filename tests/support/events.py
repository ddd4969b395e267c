"""Reading a run's event stream."""

from __future__ import annotations

from typing import Any

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc


async def collect(stub: rlm_pb2_grpc.RLMServiceStub, prompt: str, context: Any = None,
                  **fields: Any) -> list[rlm_pb2.CompletionEvent]:
    return [e async for e in stub.StreamCompletion(make_request(prompt, context, **fields))]


def final_of(events: list[rlm_pb2.CompletionEvent]) -> rlm_pb2.FinalAnswer:
    assert events[-1].HasField("final_answer"), events[-1]
    return events[-1].final_answer


def of_kind(events: list[rlm_pb2.CompletionEvent], kind: str) -> list[Any]:
    return [getattr(e, kind) for e in events if e.WhichOneof("event") == kind]


def repl(code: str) -> str:
    """A model turn that runs ``code`` in the REPL."""
    return f"Let me run this.\n```repl\n{code}\n```"
