"""The process-wide request machinery: runs a request from spec to final answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

from rlm_service.budget import LimitExceeded, StopReason
from rlm_service.config import Settings
from rlm_service.models import ModelBackend
from rlm_service.models.catalog import ModelCatalog
from rlm_service.run.context import RequestContext, Services
from rlm_service.run.events import Emit
from rlm_service.run.loop import Run
from rlm_service.run.ports import Pricing, ReplProvider, SecretRegistry
from rlm_service.run.types import FinalAnswer, RequestSpec, RunResult, RunSpec
from rlm_service.telemetry import metrics
from rlm_service.tools import Toolbox
from rlm_service.tools.http_call import HttpToolClient

__all__ = ["Engine", "RequestSpec", "RunSpec"]


class Engine:
    """Backends, the REPL provider and the callback registry, shared by every request.

    ``repls`` is the sandboxed ReplPool in the service and an in-memory provider in
    unit tests; ``pricing`` defaults to a catalog of the settings (the server passes the
    one it built at start)."""

    def __init__(self, settings: Settings, backends: dict[str, ModelBackend],
                 repls: ReplProvider[Any], registry: SecretRegistry,
                 sandbox_layers: tuple[str, ...], *, pricing: Pricing | None = None,
                 tools: Toolbox | None = None, tool_client: HttpToolClient | None = None,
                 ) -> None:
        self.settings = settings
        self.registry = registry
        self.services = Services(settings, backends, repls, registry,
                                 pricing if pricing is not None else ModelCatalog(settings),
                                 sandbox_layers, tools or Toolbox(), tool_client)
        self.active: set[RequestContext] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def backend_for(self, sub: bool) -> ModelBackend:
        return self.services.backend_for(sub)

    async def complete(self, spec: RequestSpec, emit: Emit) -> FinalAnswer:
        """Runs one request to its final answer. Raises RequestFailed or CancelledError."""
        if spec.session is None:
            return await self._complete(spec, emit, self.services)
        # In a session the root run keeps the session's REPL (rlm_service/sessions/).
        async with spec.session.turn():
            return await self._complete(spec, emit, dataclasses.replace(
                self.services, repls=spec.session.repls(self.services.repls)))

    async def _complete(self, spec: RequestSpec, emit: Emit, services: Services) -> FinalAnswer:
        req = RequestContext(services, spec, emit)
        self.active.add(req)
        self._idle.clear()
        metrics.rlm_active_requests.inc()
        outcome: metrics.RequestOutcome = "error"
        try:
            final = await _execute(req)
            outcome = ("budget" if req.ledger.exceeded else
                       "forced" if final.forced else "answered")
            return final
        except asyncio.CancelledError:
            outcome = "shutdown" if req.shutdown_reason else "cancelled"
            raise
        finally:
            if spec.session is not None:
                spec.session.usage += req.ledger.total
            self.active.discard(req)
            if not self.active:
                self._idle.set()
            metrics.rlm_active_requests.dec()
            metrics.rlm_requests.labels(outcome=outcome).inc()
            metrics.rlm_request_duration_seconds.observe(time.monotonic() - req.started)

    async def wait_idle(self) -> None:
        """Returns once no request is running (for a draining shutdown)."""
        await self._idle.wait()

    async def shutdown_runs(self, reason: str) -> None:
        """Ends every running request; each ends with a shutdown error."""
        for req in list(self.active):
            req.shutdown_reason = reason
            if req.task is not None:
                req.task.cancel()


async def _execute(req: RequestContext) -> FinalAnswer:
    """The root run under the request's time limit; a budget stop still answers."""
    spec = req.spec
    root = Run(req, depth=0, call_id="", prompt=spec.prompt, context=spec.context)
    req.task = task = asyncio.create_task(root.run())
    timer = asyncio.get_running_loop().call_later(
        max(0.0, req.deadline - time.monotonic()), req.ledger.trip_timeout)
    try:
        return _answered(req, await task)
    except (asyncio.CancelledError, LimitExceeded):
        current = asyncio.current_task()
        exceeded = req.ledger.exceeded
        if exceeded is None or (current is not None and current.cancelling()):
            raise
        if req.shutdown_reason:
            raise
        if root.result is not None:
            # The call that crossed the limit also brought the answer.
            return _answered(req, root.result)
        # A budget stop: a final answer with the best partial answer so far.
        return _final(req, req.partial_answer, root.iteration, True, exceeded.reason,
                      root.schema_retries)
    finally:
        timer.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


def _answered(req: RequestContext, result: RunResult) -> FinalAnswer:
    return _final(req, result.answer, result.iterations, result.forced,
                  StopReason.MAX_ITERATIONS if result.forced else StopReason.ANSWERED,
                  result.schema_retries)


def _final(req: RequestContext, answer: str, iterations: int, forced: bool,
           reason: StopReason, schema_retries: int = 0) -> FinalAnswer:
    metrics.rlm_request_iterations.observe(iterations)
    schema = req.spec.answer_schema
    # A forced or partial answer is checked too; it carries a value only if it matches.
    checked = schema.check(answer) if schema is not None else None
    return FinalAnswer(
        request_id=req.spec.request_id, answer=answer, iterations=iterations, forced=forced,
        stop_reason=reason, usage=req.ledger.model_usage(), total_usage=req.ledger.total,
        duration_seconds=time.monotonic() - req.started,
        value=checked.value if checked is not None else None,
        has_value=checked is not None and checked.ok, schema_retries=schema_retries,
    )
