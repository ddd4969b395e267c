"""HTTP error bodies; the statuses come from the one table in rlm_service/errors.py."""

from __future__ import annotations

from aiohttp import web

from rlm_service.errors import status_of


def status_for(exc: BaseException) -> int:
    return status_of(exc).http


def error_response(status: int, message: str) -> web.Response:
    """The Go service's error body: {"error": "..."}."""
    return web.json_response({"error": message}, status=status)
