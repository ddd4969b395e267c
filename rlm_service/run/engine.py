"""The RLM loop: root model turns, REPL blocks, sub-calls and child runs."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.budget import LIMIT_NAMES, Ledger, LimitExceeded, Limits, usage_proto
from rlm_service.config import Settings
from rlm_service.models import (
    GenerateOptions,
    Message,
    ModelBackend,
    ModelError,
    ModelReply,
    TokenUsage,
    catalog,
)
from rlm_service.repl import ReplError, ReplPool, ReplProcess
from rlm_service.run import parsing, prompts
from rlm_service.telemetry import metrics
from rlm_service.telemetry.tracing import error_status, tracer

log = logging.getLogger(__name__)
T = TypeVar("T")
PREVIEW = 200

Emit = Callable[[rlm_pb2.CompletionEvent], None]


class RunFailed(Exception):
    """The run cannot go on; maps to a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RunSpec:
    """A validated request."""

    request_id: str
    prompt: str
    context: Any
    limits: Limits
    root_model: str
    sub_model: str
    root_options: GenerateOptions
    sub_options: GenerateOptions
    stream_root_text: bool = False
    # The time limit counts from here, the request's arrival: a request that
    # first waits for a run slot must still end before the client's deadline.
    received: float = field(default_factory=time.monotonic)


@dataclass
class RunResult:
    answer: str
    iterations: int
    forced: bool


class CallbackRegistry:
    """Maps each live REPL's secret to the run it belongs to."""

    def __init__(self) -> None:
        # Keyed by the secret's hash: a dict lookup on what a caller sent then
        # reveals nothing about the secrets through timing.
        self._runs: dict[bytes, RLMRun] = {}

    def register(self, run: RLMRun) -> str:
        secret = secrets.token_urlsafe(32)
        self._runs[_digest(secret)] = run
        return secret

    def unregister(self, secret: str) -> None:
        self._runs.pop(_digest(secret), None)

    def lookup(self, secret: str) -> RLMRun | None:
        return self._runs.get(_digest(secret))


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Engine:
    """Process-wide run machinery: backends, REPL pool, limiters."""

    def __init__(self, settings: Settings, backends: dict[str, ModelBackend], pool: ReplPool,
                 registry: CallbackRegistry, sandbox_layers: tuple[str, ...]) -> None:
        self.settings = settings
        self.backends = backends
        self.pool = pool
        self.registry = registry
        self.sandbox_layers = sandbox_layers
        self.active: set[Request] = set()

    def backend_for(self, sub: bool) -> ModelBackend:
        name = self.settings.sub_backend if sub else self.settings.rlm_backend
        return self.backends[name]

    async def run(self, spec: RunSpec, emit: Emit) -> rlm_pb2.FinalAnswer:
        """Runs one request to its final answer. Raises RunFailed or CancelledError."""
        req = Request(self, spec, emit)
        self.active.add(req)
        metrics.rlm_active_runs.inc()
        outcome = "error"
        try:
            final = await req.execute()
            outcome = ("budget" if req.ledger.exceeded else
                       "forced" if final.forced else "answered")
            return final
        except asyncio.CancelledError:
            outcome = "shutdown" if req.shutdown_reason else "cancelled"
            raise
        finally:
            self.active.discard(req)
            metrics.rlm_active_runs.dec()
            metrics.rlm_runs.labels(outcome=outcome).inc()
            metrics.rlm_run_duration_seconds.observe(time.monotonic() - req.started)

    async def shutdown_runs(self, reason: str) -> None:
        for req in list(self.active):
            req.shutdown_reason = reason
            if req.task is not None:
                req.task.cancel()


class Request:
    """One client request: the ledger, limiters and event stream shared by all its depths."""

    def __init__(self, engine: Engine, spec: RunSpec, emit: Emit) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.spec = spec
        self.emit = emit
        self.started = spec.received
        # Stop a little before the limit, so the final answer still reaches a
        # client whose gRPC deadline set the limit (it expires at the same time).
        timeout = spec.limits.timeout_seconds
        self.stop_after = max(0.0, timeout - min(0.5, 0.1 * timeout))
        self.deadline = self.started + self.stop_after
        self.ledger = Ledger(spec.limits, catalog.cost_usd, on_exceeded=self._on_exceeded)
        self.run_limiter = asyncio.Semaphore(self.settings.batch_concurrency)
        self._child_limiters: dict[int, asyncio.Semaphore] = {}
        self.partial_answer = ""
        self.task: asyncio.Task[RunResult] | None = None
        self.shutdown_reason = ""

    def child_limiter(self, depth: int) -> asyncio.Semaphore:
        if depth not in self._child_limiters:
            self._child_limiters[depth] = asyncio.Semaphore(self.settings.child_run_concurrency)
        return self._child_limiters[depth]

    def _on_exceeded(self, exc: LimitExceeded) -> None:
        metrics.rlm_budget_stops.labels(limit=LIMIT_NAMES.get(exc.reason, "other")).inc()
        log.info("budget stop: %s", exc.detail, extra={"request_id": self.spec.request_id})
        if self.task is not None:
            self.task.cancel()

    async def execute(self) -> rlm_pb2.FinalAnswer:
        spec = self.spec
        root = RLMRun(self, depth=0, call_id="", prompt=spec.prompt,
                      context=spec.context)
        self.task = asyncio.create_task(root.run())
        timer = asyncio.get_running_loop().call_later(
            max(0.0, self.deadline - time.monotonic()), self.ledger.trip_timeout
        )
        try:
            return self._answered(await self.task)
        except (asyncio.CancelledError, LimitExceeded):
            current = asyncio.current_task()
            if self.ledger.exceeded is None or (current is not None and current.cancelling()):
                raise
            if self.shutdown_reason:
                raise
            if root.result is not None:
                # The call that crossed the limit also brought the answer.
                return self._answered(root.result)
            # A budget stop: a final event with the best partial answer so far.
            return self._final(self.partial_answer, root.iteration, True,
                               self.ledger.exceeded.reason)
        finally:
            timer.cancel()
            if not self.task.done():
                self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    def _answered(self, result: RunResult) -> rlm_pb2.FinalAnswer:
        return self._final(result.answer, result.iterations, result.forced,
                           rlm_pb2.STOP_REASON_MAX_ITERATIONS if result.forced
                           else rlm_pb2.STOP_REASON_ANSWERED)

    def _final(self, answer: str, iterations: int, forced: bool,
               reason: rlm_pb2.StopReason.ValueType) -> rlm_pb2.FinalAnswer:
        metrics.rlm_run_iterations.observe(iterations)
        return rlm_pb2.FinalAnswer(
            answer=answer, iterations=iterations, usage=self.ledger.model_usage(),
            duration_seconds=time.monotonic() - self.started, forced=forced,
            stop_reason=reason, total_usage=self.ledger.total.to_proto(),
            request_id=self.spec.request_id,
        )

    async def call_model(self, *, sub: bool, model: str, messages: list[Message],
                         options: GenerateOptions, depth: int,
                         on_delta: Callable[[str], None] | None = None) -> ModelReply:
        """Every model call of the request goes through here: budget, limiter, accounting."""
        self.ledger.reserve_call()
        backend = self.engine.backend_for(sub)
        started = time.monotonic()
        outcome = "error"
        sent = False
        usage: TokenUsage | None = None  # what to account for, once the call is over

        def on_attempt() -> None:
            nonlocal sent
            sent = True

        def on_retry(attempt: int, delay: float, kind: str) -> None:
            metrics.rlm_model_retries.labels(model=model, reason=kind).inc()
            # Also tells a client that streamed text of this call so far is void.
            self.emit(rlm_pb2.CompletionEvent(notice=rlm_pb2.Notice(
                kind="model_retry", depth=depth,
                message=f"{model}: {kind}, retry {attempt} in {delay:.2f} s")))

        with tracer().start_as_current_span("rlm.model_call", attributes={
            "rlm.model": model, "rlm.depth": depth, "rlm.request_id": self.spec.request_id,
        }) as span:
            try:
                # The backends' shared limiter caps model calls process-wide,
                # per attempt, so a call sleeping before a retry holds no slot.
                reply = await backend.generate(model, messages, options,
                                               deadline=self.deadline, on_delta=on_delta,
                                               on_retry=on_retry, on_attempt=on_attempt)
                outcome, usage = "ok", reply.usage
            except ModelError as exc:
                usage = exc.usage
                span.set_status(error_status(exc.message))
                raise
            except asyncio.CancelledError:
                if sent:
                    # Stopped mid-call (a budget, a cancel): the provider has the
                    # request, so it counts as a call; its tokens are unknown.
                    usage = TokenUsage()
                raise
            finally:
                # Recording may trip a budget, which stops the run: last.
                cost = self.ledger.record(model, depth, usage) if usage is not None else 0.0
                metrics.observe_model_call(
                    model, depth, outcome, time.monotonic() - started,
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    output_tokens=usage.output_tokens if usage else 0,
                    thinking_tokens=usage.thinking_tokens if usage else 0,
                    cached_tokens=usage.cached_tokens if usage else 0, cost_usd=cost)
        return reply


def _with_context(prompt: str, context: Any) -> str:
    """An rlm_query prompt with its context appended, for a plain model call."""
    if context is None:
        return prompt
    text = context if isinstance(context, str) else json.dumps(context, ensure_ascii=False)
    return f"{prompt}\n\nContext:\n{text}"


@dataclass
class RLMRun:
    """One RLM run at one depth, with its own REPL."""

    req: Request
    depth: int
    call_id: str
    prompt: str
    context: Any
    iteration: int = 0
    repl: ReplProcess | None = None
    secret: str = ""
    result: RunResult | None = None
    _var_error: str = ""  # guest hook: why the last FINAL_VAR in a reply gave no answer
    _inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    _context: contextvars.Context = field(default_factory=contextvars.copy_context)

    @property
    def settings(self) -> Settings:
        return self.req.settings

    async def spawn(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs a sub-call as a task of this run, so ending the run cancels it."""
        # Sub-calls arrive on the callback server's tasks; run them in this run's
        # context so they join its trace and carry its request id in logs.
        task = asyncio.create_task(coro, context=self._context.copy())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await task

    async def run(self) -> RunResult:
        with tracer().start_as_current_span("rlm.run", attributes={
            "rlm.depth": self.depth, "rlm.request_id": self.req.spec.request_id,
        }):
            self._context = contextvars.copy_context()
            try:
                # Kept: a budget stop can cancel the cleanup after the answer is in.
                self.result = await self._loop()
                return self.result
            finally:
                await asyncio.shield(self._cleanup())

    async def _cleanup(self) -> None:
        for task in list(self._inflight):
            task.cancel()
        if self.secret:
            self.req.engine.registry.unregister(self.secret)
        if self.repl is not None:
            await self.req.engine.pool.release(self.repl)
            self.repl = None

    async def _start_repl(self) -> None:
        if self.secret:
            self.req.engine.registry.unregister(self.secret)
        try:
            self.repl = await self.req.engine.pool.acquire()
            if self.depth == 0:
                # Pushed mid-block, so a budget stop that kills the block keeps it.
                self.repl.on_partial = self._on_partial
            self.secret = self.req.engine.registry.register(self)
            await self.repl.load_context(self.context, self.secret)
        except ReplError as exc:
            log.warning("REPL start failed: %s", exc)
            raise RunFailed(grpc.StatusCode.UNAVAILABLE,
                            "the sandboxed REPL could not be started; retry") from exc

    def _on_partial(self, text: str) -> None:
        if text:
            self.req.partial_answer = text

    def _event(self, **kw: Any) -> None:
        self.req.emit(rlm_pb2.CompletionEvent(**kw))

    async def _loop(self) -> RunResult:
        spec = self.req.spec
        kind, total, description = prompts.describe_context(self.context)
        model = spec.root_model if self.depth == 0 else spec.sub_model
        self._event(run_started=rlm_pb2.RunStarted(
            request_id=spec.request_id, root_model=model, sub_model=spec.sub_model,
            limits=spec.limits.to_proto(), context_type=kind, context_chars=total,
            sandbox_layers=list(self.req.engine.sandbox_layers), depth=self.depth,
            call_id=self.call_id,
        ))
        await self._start_repl()
        messages = [Message("user", prompts.first_message(self.prompt, description))]
        options = spec.root_options if self.depth == 0 else spec.sub_options
        options = dataclasses.replace(options, system_prompt=prompts.SYSTEM_PROMPT)
        max_iterations = spec.limits.max_iterations
        while self.iteration < max_iterations:
            self.iteration += 1
            reply = await self._root_turn(model, messages, options)
            messages.append(Message("model", reply.text))
            blocks = parsing.code_blocks(reply.text)
            if not blocks:
                answer = await self._final_from_text(reply.text)
                if answer is not None:
                    return RunResult(answer, self.iteration, forced=False)
                messages.append(Message("user", self._var_error or prompts.NO_CODE))
                continue
            answer, fed = await self._run_blocks(blocks)
            if answer is not None:
                return RunResult(answer, self.iteration, forced=False)
            messages.append(Message("user", fed))
        # Out of turns: one last call that must answer.
        messages.append(Message("user", prompts.FORCE_ANSWER))
        self.iteration += 1
        reply = await self._root_turn(model, messages, options)
        answer = await self._final_from_text(reply.text)
        if answer is None:
            blocks = parsing.code_blocks(reply.text)
            if blocks:
                answer, _ = await self._run_blocks(blocks)
        if answer is None:
            answer = reply.text.strip() or self.req.partial_answer
        return RunResult(answer, self.iteration, forced=True)

    async def _root_turn(self, model: str, messages: list[Message],
                         options: GenerateOptions) -> ModelReply:
        spec = self.req.spec
        on_delta = None
        if spec.stream_root_text:
            iteration = self.iteration

            def on_delta(text: str) -> None:
                self._event(root_text_delta=rlm_pb2.RootTextDelta(
                    iteration=iteration, text=text, depth=self.depth, call_id=self.call_id))

        self._fit_history(model, messages)
        started = time.monotonic()
        try:
            reply = await self.req.call_model(sub=self.depth > 0, model=model, messages=messages,
                                              options=options, depth=self.depth,
                                              on_delta=on_delta)
        except ModelError as exc:
            raise RunFailed(exc.code, f"root model call failed: {exc.message}") from exc
        cost = catalog.cost_usd(model, reply.usage)
        self._event(root_turn=rlm_pb2.RootTurn(
            iteration=self.iteration, text=reply.text, usage=usage_proto(reply.usage, cost),
            latency_seconds=time.monotonic() - started, depth=self.depth, call_id=self.call_id,
        ))
        return reply

    def _fit_history(self, model: str, messages: list[Message]) -> None:
        """Keeps the root history under the model's input limit by replacing the
        oldest REPL outputs with a stub. The first message (the task) stays whole."""
        budget = int(catalog.input_limit(model) * 0.9) - catalog.estimate_tokens(
            prompts.SYSTEM_PROMPT)
        sizes = [catalog.estimate_tokens(m.text) for m in messages]
        total = sum(sizes)
        trimmed = 0
        for i in range(1, len(messages) - 1):
            if total <= budget:
                break
            m = messages[i]
            if m.role != "user" or m.text == prompts.TRIMMED:
                continue
            messages[i] = Message("user", prompts.TRIMMED)
            new = catalog.estimate_tokens(prompts.TRIMMED)
            total += new - sizes[i]
            sizes[i] = new
            trimmed += 1
        if trimmed:
            self._event(notice=rlm_pb2.Notice(
                kind="history_trimmed", depth=self.depth, call_id=self.call_id,
                message=f"replaced {trimmed} old REPL outputs to fit {model}'s input limit"))

    async def _final_from_text(self, text: str) -> str | None:
        self._var_error = ""
        tag = parsing.final_tag(text)
        if tag is None:
            return None
        if not tag.is_variable:
            return tag.value
        assert self.repl is not None
        ok, value = await self.repl.get_var(tag.value)
        if ok:
            return value
        # guest hook: the model learns why FINAL_VAR gave no answer, and a REPL that
        # died turning the variable into text is replaced now, not at the next block.
        self._var_error = f"FINAL_VAR({tag.value[:80]}) gave no answer: {value}"
        if self.repl.closed:
            self._var_error += " " + await self._replace_repl()
        return None

    async def _replace_repl(self) -> str:
        assert self.repl is not None
        await self.req.engine.pool.release(self.repl)
        self.repl = None
        await self._start_repl()
        note = ("The REPL process died and was replaced by a fresh one: all "
                "variables were lost; `context` is loaded again.")
        self._event(notice=rlm_pb2.Notice(
            kind="repl_restarted", message=note, depth=self.depth, call_id=self.call_id))
        return note

    async def _run_blocks(self, blocks: list[str]) -> tuple[str | None, str]:
        fed: list[str] = []
        notes: list[str] = []
        variables: list[str] = []
        for index, code in enumerate(blocks, start=1):
            assert self.repl is not None
            with tracer().start_as_current_span("rlm.repl_block", attributes={
                "rlm.depth": self.depth, "rlm.iteration": self.iteration,
            }):
                # Sub-calls this block makes hang under its span.
                self._context = contextvars.copy_context()
                result = await self.repl.execute(code, self.settings.sandbox_block_timeout_seconds)
            outcome = "timeout" if result.timed_out else "error" if result.error else "ok"
            metrics.rlm_repl_blocks.labels(outcome=outcome).inc()
            metrics.rlm_repl_block_duration_seconds.observe(result.duration)
            self._event(code_block=rlm_pb2.CodeBlock(
                iteration=self.iteration, block_index=index, code=code, stdout=result.stdout,
                stderr=result.stderr, error=result.error, duration_seconds=result.duration,
                truncated=result.truncated, timed_out=result.timed_out,
                repl_restarted=result.crashed, depth=self.depth, call_id=self.call_id,
            ))
            if self.depth == 0 and result.partial:
                self.req.partial_answer = result.partial
            fed.append(prompts.block_feedback(index, code.count("\n") + 1,
                                              result.stdout, result.stderr))
            variables = result.variables or variables
            if result.final is not None:
                return result.final, ""
            if result.crashed:
                notes.append(await self._replace_repl())
                variables = []
                break
        return None, prompts.feedback(fed, variables, " ".join(notes))

    # --- sub-calls from the REPL ------------------------------------------------
    async def sub_call(self, prompt: str, model: str, recursive: bool, context: Any,
                       has_context: bool) -> tuple[str, bool]:
        spec = self.req.spec
        model = model or spec.sub_model
        call_id = uuid.uuid4().hex[:12]
        child_depth = self.depth + 1
        kind = rlm_pb2.SUB_CALL_KIND_RLM if recursive else rlm_pb2.SUB_CALL_KIND_LLM
        fell_back = recursive and child_depth >= spec.limits.max_depth
        started = time.monotonic()
        self._event(sub_call_started=rlm_pb2.SubCallStarted(
            call_id=call_id, parent_id=self.call_id, depth=child_depth, model=model,
            kind=kind, prompt_preview=prompt[:PREVIEW],
        ))
        if fell_back:
            self._event(notice=rlm_pb2.Notice(
                kind="rlm_query_fallback", depth=child_depth, call_id=call_id,
                message=f"rlm_query at max_depth={spec.limits.max_depth}: ran as a plain model call",
            ))
        usage = None
        error = False
        try:
            if recursive and not fell_back:
                # One limiter per depth: a parent holding a slot never waits on
                # its own children for one, so nesting cannot deadlock.
                async with self.req.child_limiter(child_depth):
                    child = RLMRun(self.req, depth=child_depth, call_id=call_id,
                                   prompt=prompt,
                                   context=context if has_context else prompt)
                    with tracer().start_as_current_span("rlm.sub_rlm"):
                        result = await child.run()
                text = result.answer
            else:
                # A fallen-back rlm_query still owes the model its context.
                llm_prompt = (_with_context(prompt, context) if fell_back and has_context
                              else prompt)
                async with self.req.run_limiter:
                    text, usage, error = await self._llm(llm_prompt, model, child_depth)
        except RunFailed as exc:
            text, error = f"Error: the sub-RLM failed: {exc.message}", True
        except LimitExceeded as exc:
            text, error = f"Error: budget exhausted ({exc.detail})", True
        except Exception:
            # The model gets an error string and the client a matching
            # sub_call_finished; the details stay in our logs.
            log.exception("sub-call failed unexpectedly")
            text, error = "Error: the sub-call failed inside the service", True
        cost = catalog.cost_usd(model, usage) if usage else 0.0
        self._event(sub_call_finished=rlm_pb2.SubCallFinished(
            call_id=call_id, parent_id=self.call_id, depth=child_depth, model=model, kind=kind,
            prompt_preview=prompt[:PREVIEW], response_preview=text[:PREVIEW],
            usage=usage_proto(usage, cost) if usage else None,
            latency_seconds=time.monotonic() - started, error=error,
            error_message=text if error else "", fell_back_to_llm=fell_back,
            run_usage=self.req.ledger.total.to_proto(),
        ))
        return text, error

    async def _llm(self, prompt: str, model: str, depth: int) -> tuple[str, Any, bool]:
        if not catalog.valid_model_name(model):
            return f"Error: {model[:40]!r} is not a valid model name.", None, True
        limit = catalog.input_limit(model)
        estimate = catalog.estimate_tokens(prompt)
        if estimate > limit:
            return (f"Error: prompt too large for {model}: about {estimate:,} tokens, the limit "
                    f"is {limit:,}. Split it into smaller pieces.", None, True)
        try:
            reply = await self.req.call_model(
                sub=True, model=model, messages=[Message("user", prompt)],
                options=self.req.spec.sub_options, depth=depth)
        except ModelError as exc:
            return f"Error: {exc.message}", exc.usage, True
        return reply.text, reply.usage, False

    async def sub_calls(self, prompts_: list[str], model: str, recursive: bool,
                        contexts: list[Any] | None) -> list[tuple[str, bool]]:
        calls: list[Awaitable[tuple[str, bool]]] = [
            self.sub_call(p, model, recursive,
                          contexts[i] if contexts else None, contexts is not None)
            for i, p in enumerate(prompts_)
        ]
        return list(await asyncio.gather(*calls))
