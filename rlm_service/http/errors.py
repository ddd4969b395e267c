"""Domain outcomes to HTTP statuses: the one mapping the HTTP face uses.

Run errors arrive as RunError.code, a gRPC status name; the statuses follow the
gRPC-to-HTTP table of google.rpc.Code (as grpc-gateway uses)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from rlm_service.http._runs import ShuttingDown
from rlm_service.servicer import InvalidRequest

_BY_GRPC_CODE: Final[dict[str, int]] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}


def status_for_code(grpc_code: str) -> int:
    return _BY_GRPC_CODE.get(grpc_code, 500)


def status_for(exc: Exception) -> int:
    if isinstance(exc, InvalidRequest):
        return 400
    if isinstance(exc, ShuttingDown):
        return 503
    return 500


def error_response(status: int, message: str) -> web.Response:
    """The Go service's error body: {"error": "..."}."""
    return web.json_response({"error": message}, status=status)
