"""One run: the RLM loop at one depth, with its own REPL. Turns, blocks, history."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rlm_service.models import GenerateOptions, Message
from rlm_service.models.catalog import estimate_tokens
from rlm_service.repl import ReplError
from rlm_service.run import answer_schema, events, parsing, prompts
from rlm_service.run.compaction import Compactor
from rlm_service.run.context import ModelCall, ModelCallFailed, RequestContext
from rlm_service.run.history import fit_history
from rlm_service.run.ports import Repl
from rlm_service.run.types import ErrorKind, RequestFailed, RunResult, model_failure
from rlm_service.telemetry import metrics
from rlm_service.telemetry.tracing import tracer
from rlm_service.tools import ToolGrant

log = logging.getLogger(__name__)
T = TypeVar("T")

REPL_RESTARTED = ("The REPL process died and was replaced by a fresh one: all variables "
                  "were lost; `context` is loaded again.")


@dataclass
class Run:
    """One RLM run at one depth, with its own REPL."""

    req: RequestContext
    depth: int
    call_id: str
    prompt: str
    context: Any
    iteration: int = 0
    repl: Repl | None = None
    secret: str = ""
    result: RunResult | None = None
    _var_error: str = ""  # why the last FINAL_VAR in a reply gave no answer
    # The REPL starting (and loading the context) while the first root call is in
    # flight: that call does not need it.
    _starting: asyncio.Task[None] | None = None
    # Answers sent back for not matching the request's answer_schema (depth 0).
    schema_retries: int = 0
    compactor: Compactor = field(default_factory=Compactor)
    _inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    _context: contextvars.Context = field(default_factory=contextvars.copy_context)

    @property
    def tools(self) -> ToolGrant:
        return self.req.tools_for(self.depth)

    @property
    def model(self) -> str:
        return self.req.spec.root_model if self.depth == 0 else self.req.spec.sub_model

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

    # --- the REPL -------------------------------------------------------------------
    async def _cleanup(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
            self._starting = None
        for task in list(self._inflight):
            task.cancel()
        if self.secret:
            self.req.services.registry.unregister(self.secret)
        await self._drop_repl()

    async def _drop_repl(self) -> None:
        if self.repl is not None:
            repl, self.repl = self.repl, None
            await self.req.services.repls.release(repl)

    async def _start_repl(self) -> None:
        services = self.req.services
        if self.secret:
            services.registry.unregister(self.secret)
        try:
            self.repl = await services.repls.acquire()
            if self.depth == 0:
                # Pushed mid-block, so a budget stop that kills the block keeps it.
                self.repl.on_partial = self._on_partial
            self.secret = services.registry.register(self)
            await self.repl.load_context(self.context, self.secret, self.tools)
        except ReplError as exc:
            log.warning("REPL start failed: %s", exc)
            raise RequestFailed(ErrorKind.SANDBOX_UNAVAILABLE,
                                "the sandboxed REPL could not be started; retry") from exc

    async def _repl_ready(self) -> None:
        """Waits for the REPL started with the run; raises its start's failure."""
        if self._starting is not None:
            starting, self._starting = self._starting, None
            await starting

    def _on_partial(self, text: str) -> None:
        if text:
            self.req.partial_answer = text

    # --- the loop -------------------------------------------------------------------
    async def _loop(self) -> RunResult:
        spec = self.req.spec
        kind, total, description = prompts.describe_context(self.context)
        self.req.emit(events.RunStarted(
            request_id=spec.request_id, model=self.model, sub_model=spec.sub_model,
            limits=spec.limits, context_type=kind, context_chars=total,
            sandbox_layers=self.req.services.sandbox_layers, depth=self.depth,
            call_id=self.call_id,
        ))
        self._starting = asyncio.create_task(self._start_repl())
        first = prompts.first_message(self.prompt, description)
        if self.depth == 0 and spec.answer_schema is not None:
            first += "\n\n" + answer_schema.instructions(spec.answer_schema)
        messages = [Message("user", first)]
        if self.depth == 0 and spec.session is not None:
            messages = spec.session.begin_turn(messages[0])
        options = spec.root_options if self.depth == 0 else spec.sub_options
        options = dataclasses.replace(options, system_prompt=prompts.system_prompt(
            self.req.services.tools.describe(self.tools)))
        while self.iteration < spec.limits.max_iterations:
            self.iteration += 1
            reply = await self._root_turn(messages, options)
            messages.append(Message("model", reply.text))
            blocks = parsing.code_blocks(reply.text)
            if not blocks:
                answer = await self._final_from_text(reply.text)
                if answer is None:
                    messages.append(Message("user", self._var_error or prompts.NO_CODE))
                    continue
            else:
                answer, fed = await self._run_blocks(blocks)
                if answer is None:
                    messages.append(Message("user", fed))
                    continue
            retry = self._schema_retry(answer)
            if retry is None:
                return RunResult(answer, self.iteration, forced=False,
                                 schema_retries=self.schema_retries)
            messages.append(Message("user", retry))
        # Out of turns: one last call that must answer.
        messages.append(Message("user", prompts.FORCE_ANSWER))
        self.iteration += 1
        reply = await self._root_turn(messages, options)
        answer = await self._final_from_text(reply.text)
        if answer is None:
            blocks = parsing.code_blocks(reply.text)
            if blocks:
                answer, _ = await self._run_blocks(blocks)
        if answer is None:
            answer = reply.text.strip() or self.req.partial_answer
        return RunResult(answer, self.iteration, forced=True, schema_retries=self.schema_retries)

    def _schema_retry(self, answer: str) -> str | None:
        """None when the answer may stand; else what to tell the model. Each retry is
        a model turn, so it counts against the iteration, call, token and cost caps."""
        schema = self.req.spec.answer_schema
        if self.depth > 0 or schema is None:
            return None
        checked = schema.check(answer)
        if checked.ok:
            return None
        limit = self.req.settings.answer_schema_max_retries
        if self.schema_retries >= limit:
            raise RequestFailed(
                ErrorKind.ANSWER_INVALID,
                f"the answer did not match answer_schema after {limit} "
                f"{'retry' if limit == 1 else 'retries'}: {checked.error}")
        self.schema_retries += 1
        self.req.emit(events.Notice("answer_schema_mismatch", checked.error,
                                    depth=self.depth, call_id=self.call_id))
        return answer_schema.retry_message(checked.error, limit - self.schema_retries + 1)

    async def _root_turn(self, messages: list[Message], options: GenerateOptions) -> ModelCall:
        on_delta = None
        if self.req.spec.stream_root_text:
            iteration = self.iteration

            def on_delta(text: str) -> None:
                self.req.emit(events.RootTextDelta(iteration, text, self.depth, self.call_id))

        await self.compactor.maybe_compact(self, messages, options)
        trimmed = fit_history(messages, self.req.services.pricing.input_limit(self.model),
                              estimate_tokens)
        if trimmed:
            self.req.emit(events.Notice(
                "history_trimmed",
                f"replaced {trimmed} old REPL outputs to fit {self.model}'s input limit",
                depth=self.depth, call_id=self.call_id))
        started = time.monotonic()
        try:
            reply = await self.req.call_model(sub=self.depth > 0, model=self.model,
                                              messages=messages, options=options,
                                              depth=self.depth, on_delta=on_delta)
        except ModelCallFailed as exc:
            raise RequestFailed(model_failure(exc.error.kind),
                                f"root model call failed: {exc.error.message}") from exc
        self.req.emit(events.RootTurn(
            iteration=self.iteration, text=reply.text, usage=reply.usage,
            latency_seconds=time.monotonic() - started, depth=self.depth, call_id=self.call_id,
        ))
        return reply

    async def _final_from_text(self, text: str) -> str | None:
        self._var_error = ""
        tag = parsing.final_tag(text)
        if tag is None:
            return None
        if not tag.is_variable:
            # No REPL needed, so none is waited for (a budget stop may land any moment
            # now and the answer is in); but a sandbox that already failed to start
            # fails the run, as it did before the start overlapped the first call.
            starting = self._starting
            if starting is not None and starting.done() and not starting.cancelled() \
                    and starting.exception() is not None:
                await self._repl_ready()
            return tag.value
        await self._repl_ready()
        assert self.repl is not None
        ok, value = await self.repl.get_var(tag.value)
        if ok:
            return value
        # The model learns why FINAL_VAR gave no answer, and a REPL that died turning
        # the variable into text is replaced now, not at the next block.
        self._var_error = f"FINAL_VAR({tag.value[:80]}) gave no answer: {value}"
        if self.repl.closed:
            self._var_error += " " + await self._replace_repl()
        return None

    async def _replace_repl(self) -> str:
        await self._drop_repl()
        await self._start_repl()
        self.req.emit(events.Notice("repl_restarted", REPL_RESTARTED, depth=self.depth,
                                    call_id=self.call_id))
        return REPL_RESTARTED

    async def _run_blocks(self, blocks: list[str]) -> tuple[str | None, str]:
        """Runs one turn's blocks in order: (the final answer or None, the feedback)."""
        fed: list[str] = []
        note = ""
        variables: list[str] = []
        await self._repl_ready()
        for index, code in enumerate(blocks, start=1):
            assert self.repl is not None
            with tracer().start_as_current_span("rlm.repl_block", attributes={
                "rlm.depth": self.depth, "rlm.iteration": self.iteration,
            }):
                # Sub-calls this block makes hang under its span.
                self._context = contextvars.copy_context()
                result = await self.repl.execute(
                    code, self.req.settings.sandbox_block_timeout_seconds)
            outcome = "timeout" if result.timed_out else "error" if result.error else "ok"
            metrics.rlm_repl_blocks.labels(outcome=outcome).inc()
            metrics.rlm_repl_block_duration_seconds.observe(result.duration)
            self.req.emit(events.CodeBlock(
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
                note = await self._replace_repl()
                variables = []
                break
        return None, prompts.feedback(fed, variables, note)
