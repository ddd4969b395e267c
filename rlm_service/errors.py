"""Domain failures to wire statuses: the one table both faces use.

The gRPC face ends the RPC with ``grpc``; the HTTP face answers with ``http``,
which follows google.rpc.Code's HTTP mapping (as grpc-gateway does) for the same
gRPC code, so a client sees the same failure on either face."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import grpc

from rlm_service.run.types import ErrorKind, RequestFailed


@dataclass(frozen=True)
class Status:
    grpc: grpc.StatusCode
    http: int


STATUS: Final[dict[ErrorKind, Status]] = {
    ErrorKind.INVALID_REQUEST: Status(grpc.StatusCode.INVALID_ARGUMENT, 400),
    ErrorKind.SHUTTING_DOWN: Status(grpc.StatusCode.UNAVAILABLE, 503),
    ErrorKind.SANDBOX_UNAVAILABLE: Status(grpc.StatusCode.UNAVAILABLE, 503),
    ErrorKind.INTERNAL: Status(grpc.StatusCode.INTERNAL, 500),
    ErrorKind.MODEL_RATE_LIMITED: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    ErrorKind.MODEL_UNAVAILABLE: Status(grpc.StatusCode.UNAVAILABLE, 503),
    ErrorKind.MODEL_TIMEOUT: Status(grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    ErrorKind.MODEL_BAD_REQUEST: Status(grpc.StatusCode.INVALID_ARGUMENT, 400),
    ErrorKind.MODEL_PERMISSION_DENIED: Status(grpc.StatusCode.PERMISSION_DENIED, 403),
    ErrorKind.MODEL_NOT_FOUND: Status(grpc.StatusCode.NOT_FOUND, 404),
    ErrorKind.MODEL_REFUSED: Status(grpc.StatusCode.FAILED_PRECONDITION, 400),
    ErrorKind.MODEL_INTERNAL: Status(grpc.StatusCode.INTERNAL, 500),
    ErrorKind.REPLAY_MISS: Status(grpc.StatusCode.FAILED_PRECONDITION, 400),
    ErrorKind.CONTEXT_NOT_FOUND: Status(grpc.StatusCode.NOT_FOUND, 404),
    ErrorKind.CONTEXT_TOO_LARGE: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    ErrorKind.OVERLOADED: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    ErrorKind.RUN_NOT_FOUND: Status(grpc.StatusCode.NOT_FOUND, 404),
    ErrorKind.RUN_ACCESS_DENIED: Status(grpc.StatusCode.PERMISSION_DENIED, 403),
    ErrorKind.RUN_REPLAY_GONE: Status(grpc.StatusCode.OUT_OF_RANGE, 400),
    ErrorKind.RUN_CANCELLED: Status(grpc.StatusCode.CANCELLED, 499),
    ErrorKind.ANSWER_INVALID: Status(grpc.StatusCode.FAILED_PRECONDITION, 400),
    ErrorKind.SESSION_NOT_FOUND: Status(grpc.StatusCode.NOT_FOUND, 404),
    ErrorKind.SESSION_ACCESS_DENIED: Status(grpc.StatusCode.PERMISSION_DENIED, 403),
    ErrorKind.SESSION_BUSY: Status(grpc.StatusCode.FAILED_PRECONDITION, 400),
    ErrorKind.SESSION_LIMIT: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
}

_INTERNAL: Final = STATUS[ErrorKind.INTERNAL]


def status_of(exc: BaseException) -> Status:
    """The status for a failure; anything but a RequestFailed is an internal error."""
    return STATUS[exc.kind] if isinstance(exc, RequestFailed) else _INTERNAL
