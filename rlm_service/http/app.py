"""The aiohttp application and its lifecycle (AppRunner start/stop)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from opentelemetry.trace import SpanKind
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from rlm_service.auth import KeyRing
from rlm_service.config import Settings
from rlm_service.http import routes, runs
from rlm_service.http.auth import auth_middleware
from rlm_service.http.errors import error_response
from rlm_service.servicer import RLMServicer
from rlm_service.telemetry import metrics
from rlm_service.telemetry.tracing import error_status, extract_context, tracer

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
OPENAPI = HERE / "openapi.json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_label(request: web.Request) -> str:
    """The route template, never the raw path: labels must stay low-cardinality."""
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource is not None else None
    return route if route and info.http_exception is None else "other"


@web.middleware
async def _edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Metrics, a server span (parent from the traceparent header) and JSON errors:
    a client never sees an HTML error page or a traceback."""
    start = time.monotonic()
    route = _route_label(request)
    status = 500
    with tracer().start_as_current_span(
            f"{request.method} {route}", kind=SpanKind.SERVER,
            context=extract_context(request.headers.items()),
            attributes={"http.request.method": request.method, "http.route": route}) as span:
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            response = error_response(exc.status, exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except Exception:
            log.exception("HTTP handler failed", extra={"route": route})
            span.set_status(error_status("internal error"))
            return error_response(500, "internal error")
        finally:
            span.set_attribute("http.response.status_code", status)
            metrics.rlm_http_requests.labels(
                method=request.method, path=route, code=str(status)).inc()
            metrics.rlm_http_request_duration_seconds.labels(
                method=request.method, path=route).observe(time.monotonic() - start)


async def _healthz(request: web.Request) -> web.Response:
    if not request.app[routes.SERVICER].accepting:
        return web.json_response({"status": "shutting down"}, status=503)
    return web.json_response({"status": "ok"})


OPENAPI_DOC: web.AppKey[bytes] = web.AppKey("openapi_doc", bytes)


def openapi_document(tool_names: frozenset[str]) -> bytes:
    """openapi.json as this server serves it: the request's ``tools.names`` may hold
    only the operator tools it offers (the file says none)."""
    doc = json.loads(OPENAPI.read_text())
    if tool_names:
        names = doc["components"]["schemas"]["CompletionRequest"]["properties"]["tools"][
            "properties"]["names"]
        names.pop("maxItems", None)
        names["items"] = {"type": "string", "enum": sorted(tool_names)}
    return json.dumps(doc, indent=2, ensure_ascii=False).encode()


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_DOC], content_type="application/json")


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _revalidate_page(request: web.Request, response: web.StreamResponse) -> None:
    """The page is a handful of ES modules: a browser that kept an old app.js next
    to a new index.html would break, so it must revalidate each (an ETag or
    Last-Modified check, usually a 304)."""
    if request.path == "/" or request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-cache"


def make_app(servicer: RLMServicer, settings: Settings,
             keys: KeyRing | None = None) -> web.Application:
    # edge: API keys, inside _edge so refusals get its metrics, span and JSON body.
    middlewares = [_edge, *([auth_middleware(keys)] if keys is not None else [])]
    # A 50 MB context is a normal request; the gRPC face's message limit applies.
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_message_bytes)
    app[routes.SERVICER] = servicer
    app[OPENAPI_DOC] = openapi_document(servicer.engine.services.tools.all.names)
    app.on_response_prepare.append(_revalidate_page)
    app.router.add_post("/completion", routes.completion)
    app.router.add_route("*", "/completion", routes.method_not_allowed("POST"))
    app.router.add_post("/v1/completions:stream", routes.stream)
    app.router.add_route("*", "/v1/completions:stream", routes.method_not_allowed("POST"))
    runs.add_routes(app)  # run control (rlm_service/http/runs.py)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC)
    return app


class HttpFace:
    """The running HTTP server; ``port`` is the bound one (HTTP_PORT=0 picks one)."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_http_face(servicer: RLMServicer, settings: Settings,
                          keys: KeyRing | None = None) -> HttpFace:
    # handler_cancellation: a client that disconnects cancels its handler, and so
    # its run, at once (aiohttp leaves handlers running by default).
    runner = web.AppRunner(make_app(servicer, settings, keys), handler_cancellation=True,
                           shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    host = settings.http_host.strip("[]") or "0.0.0.0"
    site = web.TCPSite(runner, host, settings.http_port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else settings.http_port
    return HttpFace(runner, int(port))
