"""The RLMService handlers take the request as raw bytes and parse it here.

grpc.aio answers a message its deserializer cannot parse with UNKNOWN and logs an
ERROR with a traceback for each one, so anyone could flood the log. Registered with
identity deserializers, the servicer's methods get the bytes; a message that does
not parse is refused with INVALID_ARGUMENT, a message naming the field where that
can be told (bad UTF-8), and at most one WARNING line a minute.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2
from google.protobuf.message import DecodeError, Message

from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc

log = logging.getLogger(__name__)
SERVICE: Final = rlm_pb2.DESCRIPTOR.services_by_name["RLMService"].full_name
Context = grpc.aio.ServicerContext[Any, Any]


class BadMessage(ValueError):
    """The bytes are not a CompletionRequest; the message says why."""


class _OncePerInterval:
    """One log line per interval at most, saying how many were folded into it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._folded = 0

    def warn(self, message: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._folded += 1
                return
            folded, self._folded, self._next = self._folded, 0, now + self.interval
        log.warning("refused an undecodable request: %s", message,
                    extra={"suppressed_since_last": folded})


_warnings = _OncePerInterval(60.0)


def _lenient_request_class() -> type[Message]:
    """CompletionRequest with every string field as bytes (and the Struct map as the
    repeated entries it is on the wire), so a message refused for bad UTF-8 can be
    parsed again to find which field it was."""
    rlm_file = descriptor_pb2.FileDescriptorProto()
    rlm_pb2.DESCRIPTOR.CopyToProto(rlm_file)
    struct_file = descriptor_pb2.FileDescriptorProto()
    struct_pb2.DESCRIPTOR.CopyToProto(struct_file)
    out = descriptor_pb2.FileDescriptorProto(name="rlm_lenient.proto", package="rlm_lenient",
                                             syntax="proto3")
    out.message_type.extend(m for m in rlm_file.message_type
                            if m.name in ("CompletionRequest", "ModelOptions", "ToolSelection"))
    out.message_type.extend(struct_file.message_type)
    out.enum_type.extend(struct_file.enum_type)
    renames = {".rlm.v1.": ".rlm_lenient.", ".google.protobuf.": ".rlm_lenient."}
    todo = list(out.message_type)
    while todo:
        message = todo.pop()
        message.options.ClearField("map_entry")
        todo.extend(message.nested_type)
        for field in message.field:
            if field.type == field.TYPE_STRING:
                field.type = field.TYPE_BYTES
            for old, new in renames.items():
                if field.type_name.startswith(old):
                    field.type_name = new + field.type_name[len(old):]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(out)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(
        "rlm_lenient.CompletionRequest"))


_lenient: type[Message] | None = None


def _first_bad_utf8(raw: bytes) -> str | None:
    global _lenient
    if _lenient is None:
        _lenient = _lenient_request_class()
    try:
        message: Any = _lenient.FromString(raw)
    except DecodeError:
        return None
    todo: list[tuple[bytes, str]] = [
        (getattr(message, name), name) for name in ("prompt", "root_model", "sub_model")]
    todo += [(n, f"tools.names[{i}]") for i, n in enumerate(message.tools.names)]
    values: list[tuple[Any, str]] = [(message.context, "context")] if message.HasField(
        "context") else []
    while values:
        value, path = values.pop()
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            todo.append((value.string_value, path))
        elif kind == "list_value":
            values.extend((v, f"{path}[{i}]") for i, v in enumerate(value.list_value.values))
        elif kind == "struct_value":
            for entry in value.struct_value.fields:
                key = entry.key.decode("utf-8", "backslashreplace")[:40]
                todo.append((entry.key, f"a key in {path}"))
                values.append((entry.value, f"{path}[{key!r}]"))
    for data, path in todo:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"{path} is not valid UTF-8 (byte {exc.start}); strings must be UTF-8 " \
                   "without encoded surrogates"
    return None


def parse_request(raw: bytes) -> rlm_pb2.CompletionRequest:
    """The request, or BadMessage naming what is wrong with it."""
    try:
        return rlm_pb2.CompletionRequest.FromString(raw)
    except DecodeError:
        pass
    where = _first_bad_utf8(raw)
    if where is not None:
        raise BadMessage(where)
    raise BadMessage("the request is not a valid rlm.v1.CompletionRequest message "
                     "(malformed protobuf, or a context nested deeper than protobuf's "
                     "100-message limit)")


async def _decode(raw: bytes, context: Context) -> rlm_pb2.CompletionRequest:
    try:
        return parse_request(raw)
    except BadMessage as exc:
        _warnings.warn(str(exc))
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("unreachable") from exc


StreamMethod = Callable[[rlm_pb2.CompletionRequest, Context],
                        AsyncGenerator[rlm_pb2.CompletionEvent, None]]
UnaryMethod = Callable[[rlm_pb2.CompletionRequest, Context],
                       Awaitable[rlm_pb2.CompletionResponse]]


class _Handlers:
    """Catches the handlers the generated ``add_RLMServiceServicer_to_server`` makes."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, _: object) -> None:
        pass

    def add_registered_method_handlers(self, _: str,
                                       handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self.handlers = dict(handlers)


def add_servicer(servicer: Any, server: grpc.aio.Server) -> None:
    """Registers the servicer: its two request methods with byte-level request decoding,
    every other method (uploads, run control) as generated."""
    generated = _Handlers()
    rlm_pb2_grpc.add_RLMServiceServicer_to_server(servicer, generated)  # type: ignore[arg-type]
    stream_method: StreamMethod = servicer.StreamCompletion
    unary_method: UnaryMethod = servicer.Complete

    async def stream_completion(raw: bytes,
                                context: Context) -> AsyncIterator[rlm_pb2.CompletionEvent]:
        request = await _decode(raw, context)
        # aclosing: closing this generator (a client cancel) closes the servicer's,
        # and so cancels the run, now rather than at garbage collection.
        async with contextlib.aclosing(stream_method(request, context)) as events:
            async for event in events:
                yield event

    async def complete(raw: bytes, context: Context) -> rlm_pb2.CompletionResponse:
        return await unary_method(await _decode(raw, context), context)

    handlers = {
        **generated.handlers,
        # No request_deserializer: the handler gets the bytes as they arrived.
        "StreamCompletion": grpc.unary_stream_rpc_method_handler(
            stream_completion,
            response_serializer=rlm_pb2.CompletionEvent.SerializeToString),
        "Complete": grpc.unary_unary_rpc_method_handler(
            complete, response_serializer=rlm_pb2.CompletionResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
