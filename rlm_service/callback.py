"""How REPL code reaches models: the run secrets and the LLMQuery servicer, over a
Unix socket only."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from rlm_service._gen.rlm.internal.v1 import llm_query_pb2, llm_query_pb2_grpc
from rlm_service.repl.calls import CallCaps
from rlm_service.repl_guest import protocol
from rlm_service.run import subcalls, tool_calls
from rlm_service.run.loop import Run

log = logging.getLogger(__name__)


class CallbackRegistry:
    """Maps each live REPL's secret to the run it belongs to."""

    def __init__(self) -> None:
        # Keyed by the secret's hash: a dict lookup on what a caller sent then
        # reveals nothing about the secrets through timing.
        self._runs: dict[bytes, Run] = {}

    def register(self, run: Run) -> str:
        secret = secrets.token_urlsafe(32)
        self._runs[_digest(secret)] = run
        return secret

    def unregister(self, secret: str) -> None:
        self._runs.pop(_digest(secret), None)

    def lookup(self, secret: str) -> Run | None:
        return self._runs.get(_digest(secret))

    def runs(self) -> list[Run]:
        """The runs holding a live secret, as a snapshot."""
        return list(self._runs.values())


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class LLMQueryServicer(llm_query_pb2_grpc.LLMQueryServiceServicer):
    def __init__(self, registry: CallbackRegistry, max_batch: int) -> None:
        self.registry = registry
        self.max_batch = max_batch
        self.caps = CallCaps()  # guest hook: per-REPL calls and bytes in flight

    async def _run_for(self, context: grpc.aio.ServicerContext[Any, Any]) -> Run:
        secret = ""
        for key, value in context.invocation_metadata() or ():
            if key == protocol.SECRET_METADATA_KEY:
                secret = value if isinstance(value, str) else value.decode()
        run = self.registry.lookup(secret) if secret else None
        if run is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or expired run secret")
            raise AssertionError("unreachable")
        return run

    async def Query(self, request: llm_query_pb2.QueryRequest,
                    context: grpc.aio.ServicerContext[Any, Any]) -> llm_query_pb2.QueryResponse:
        run = await self._run_for(context)
        with self.caps.admit(run, request.ByteSize()) as refused:
            if refused is not None:
                return llm_query_pb2.QueryResponse(text=refused, error=True)
            has_context = request.HasField("context")
            value = _from_value(request.context) if has_context else None
            text, error = await run.spawn(subcalls.query(
                run, request.prompt, request.model, request.recursive, value, has_context))
        return llm_query_pb2.QueryResponse(text=text, error=error)

    async def QueryBatched(
        self, request: llm_query_pb2.QueryBatchedRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> llm_query_pb2.QueryBatchedResponse:
        run = await self._run_for(context)
        prompts = list(request.prompts)
        if len(prompts) > self.max_batch:
            text = (f"Error: {len(prompts)} prompts in one batch; the limit is "
                    f"{self.max_batch}. Split the batch.")
            return llm_query_pb2.QueryBatchedResponse(
                responses=[llm_query_pb2.QueryResponse(text=text, error=True)] * len(prompts))
        contexts = [_from_value(v) for v in request.contexts] if request.contexts else None
        if contexts is not None and len(contexts) != len(prompts):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "contexts must have one item per prompt")
        with self.caps.admit(run, request.ByteSize()) as refused:
            if refused is not None:
                return llm_query_pb2.QueryBatchedResponse(
                    responses=[llm_query_pb2.QueryResponse(text=refused, error=True)]
                    * len(prompts))
            results = await run.spawn(subcalls.query_batched(
                run, prompts, request.model, request.recursive, contexts))
        return llm_query_pb2.QueryBatchedResponse(
            responses=[llm_query_pb2.QueryResponse(text=t, error=e) for t, e in results]
        )

    async def CallTool(self, request: llm_query_pb2.CallToolRequest,
                       context: grpc.aio.ServicerContext[Any, Any],
                       ) -> llm_query_pb2.CallToolResponse:
        run = await self._run_for(context)
        with self.caps.admit(run, request.ByteSize()) as refused:
            if refused is not None:
                return llm_query_pb2.CallToolResponse(text=refused.removeprefix("Error: "),
                                                      error=True)
            reply, error = await run.spawn(
                tool_calls.call(run, request.name, request.arguments_json))
        return llm_query_pb2.CallToolResponse(text=reply.text, error=error,
                                              is_json=reply.is_json)


def _from_value(value: Any) -> Any:
    return json_format.MessageToDict(value) if value.WhichOneof("kind") else None


async def start_callback_server(
    registry: CallbackRegistry, socket_path: Path, max_message_bytes: int, max_batch: int
) -> grpc.aio.Server:
    server = grpc.aio.server(options=[
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ])
    llm_query_pb2_grpc.add_LLMQueryServiceServicer_to_server(
        LLMQueryServicer(registry, max_batch), server)
    server.add_insecure_port(f"unix://{socket_path}")
    await server.start()
    # Sandboxes run under other uids; the per-run secret is what authorises a call.
    await asyncio.to_thread(os.chmod, socket_path, 0o666)
    return server
