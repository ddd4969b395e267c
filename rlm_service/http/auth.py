"""The HTTP face of API keys (rlm_service/auth.py): an aiohttp middleware.

Health, the page, its static files, the OpenAPI document and /metrics stay open;
everything else needs ``Authorization: Bearer <key>``. Run routes also take one of
the key's run slots; http/_runs.py books the run's cost through ``current_lease``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from rlm_service.auth import (
    KeyRing,
    OverLimit,
    PermissionDenied,
    Unauthenticated,
    current_lease,
    tag,
)
from rlm_service.http.errors import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS: Final = frozenset({"/", "/healthz", "/openapi.json", "/metrics"})
RUN_PATHS: Final = frozenset({"/completion", "/v1/completions:stream"})


def auth_middleware(ring: KeyRing) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or request.path.startswith("/static/"):
            return await handler(request)
        try:
            key = await ring.identify(request.headers.get("Authorization"))
        except Unauthenticated as exc:
            response = error_response(401, str(exc))
            response.headers["WWW-Authenticate"] = 'Bearer realm="rlm-service"'
            return response
        except PermissionDenied as exc:
            return error_response(403, str(exc))
        tag(key)
        if request.path not in RUN_PATHS or request.method != "POST":
            return await handler(request)
        try:
            lease = ring.admit(key)
        except OverLimit as exc:
            return error_response(429, str(exc))
        token = current_lease.set(lease)
        try:
            return await handler(request)
        finally:
            current_lease.reset(token)
            lease.release()

    return middleware
