"""The view state of one run, built from its events alone.

No I/O and no clock here: the live terminal view, the plain-line output and
``rlm replay`` all feed events into ``ViewState.apply`` and read the result,
so what a saved run shows is exactly what the live run showed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rlm_service._gen.rlm.v1 import rlm_pb2

# The same fences the server runs (rlm_service/run/parsing.py); the client only
# uses them to show which block of a turn is running before its result arrives.
_BLOCK = re.compile(r"```(?:repl|python|py)[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)

# Exit codes of `rlm run` and `rlm replay`.
EXIT_ANSWERED = 0
EXIT_BAD_INPUT = 2
EXIT_PARTIAL = 3
EXIT_FAILED = 4
EXIT_CANCELLED = 130

STOP_REASONS = {
    rlm_pb2.STOP_REASON_ANSWERED: "answered",
    rlm_pb2.STOP_REASON_MAX_ITERATIONS: "forced at the iteration limit",
    rlm_pb2.STOP_REASON_MAX_LLM_CALLS: "stopped by max LLM calls",
    rlm_pb2.STOP_REASON_MAX_TOTAL_TOKENS: "stopped by max tokens",
    rlm_pb2.STOP_REASON_MAX_COST: "stopped by max cost",
    rlm_pb2.STOP_REASON_TIMEOUT: "stopped by the timeout",
}


def code_blocks(text: str) -> list[str]:
    return [m.group(1) for m in _BLOCK.finditer(text) if m.group(1).strip()]


@dataclass
class Totals:
    calls: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        """What max_total_tokens counts: prompt + output + thinking."""
        return self.prompt_tokens + self.output_tokens + self.thinking_tokens

    @classmethod
    def of(cls, usage: rlm_pb2.Usage) -> Totals:
        return cls(usage.calls, usage.prompt_tokens, usage.output_tokens, usage.thinking_tokens,
                   usage.cached_tokens, usage.cost_usd)

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.calls + other.calls, self.prompt_tokens + other.prompt_tokens,
                      self.output_tokens + other.output_tokens,
                      self.thinking_tokens + other.thinking_tokens,
                      self.cached_tokens + other.cached_tokens, self.cost_usd + other.cost_usd)


@dataclass
class CallView:
    """One llm_query / rlm_query sub-call, or an operator tool call (``model`` holds
    the tool's name)."""

    call_id: str
    parent_id: str
    depth: int
    recursive: bool
    model: str = ""
    prompt_preview: str = ""
    done: bool = False
    error: bool = False
    latency: float = 0.0
    response_preview: str = ""


@dataclass
class RunView:
    """The request's root run (call_id "") or a child RLM run (call_id of its rlm_query)."""

    call_id: str
    depth: int
    model: str = ""
    iteration: int = 0
    blocks: list[str] = field(default_factory=list)
    blocks_done: int = 0
    code: str = ""
    output: str = ""
    output_error: bool = False
    calls: list[str] = field(default_factory=list)

    @property
    def running_block(self) -> int:
        """1-based index of the block running now, 0 when none is."""
        return self.blocks_done + 1 if self.blocks_done < len(self.blocks) else 0


@dataclass
class DepthStats:
    in_flight: int = 0
    done: int = 0
    errors: int = 0
    latency_total: float = 0.0
    latency_max: float = 0.0

    @property
    def latency_avg(self) -> float:
        return self.latency_total / self.done if self.done else 0.0


@dataclass
class ViewState:
    request_id: str = ""
    root_model: str = ""
    sub_model: str = ""
    context_type: str = ""
    context_chars: int = 0
    limits: dict[str, float] = field(default_factory=dict)
    runs: dict[str, RunView] = field(default_factory=dict)
    calls: dict[str, CallView] = field(default_factory=dict)
    depths: dict[int, DepthStats] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    events: int = 0
    answer: str | None = None
    iterations: int = 0
    forced: bool = False
    stop_reason: rlm_pb2.StopReason.ValueType = rlm_pb2.STOP_REASON_UNSPECIFIED
    error_code: str = ""
    error_message: str = ""
    # Usage so far: the run-wide total the last finished sub-call reported, plus
    # the root turns (any depth) reported after it.
    _usage_base: Totals = field(default_factory=Totals)
    _usage_since: Totals = field(default_factory=Totals)
    _final_usage: Totals | None = None

    @property
    def usage(self) -> Totals:
        return self._final_usage or (self._usage_base + self._usage_since)

    @property
    def root(self) -> RunView:
        return self.runs.setdefault("", RunView("", 0, self.root_model))

    @property
    def finished(self) -> bool:
        return self.answer is not None or bool(self.error_code)

    def run_of(self, call_id: str, depth: int) -> RunView:
        return self.runs.setdefault(call_id, RunView(call_id, depth))

    def apply(self, event: rlm_pb2.CompletionEvent) -> None:
        kind = event.WhichOneof("event")
        if kind is None:
            return
        self.events += 1
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(getattr(event, kind))

    def fail(self, code: str, message: str) -> None:
        """The call ended with a non-OK status that no error event announced."""
        if not self.error_code and self.answer is None:
            self.error_code, self.error_message = code, message

    # --- one handler per event kind ------------------------------------------
    def _on_run_started(self, e: rlm_pb2.RunStarted) -> None:
        if e.depth == 0:
            self.request_id, self.root_model, self.sub_model = (e.request_id, e.root_model,
                                                                e.sub_model)
            self.context_type, self.context_chars = e.context_type, e.context_chars
            self.limits = {f.name: v for f, v in e.limits.ListFields()}
        self.run_of(e.call_id, e.depth).model = e.root_model

    def _on_root_turn(self, e: rlm_pb2.RootTurn) -> None:
        run = self.run_of(e.call_id, e.depth)
        run.iteration, run.blocks, run.blocks_done = e.iteration, code_blocks(e.text), 0
        if run.blocks:
            run.code = run.blocks[0]
        self._usage_since = self._usage_since + Totals.of(e.usage)

    def _on_code_block(self, e: rlm_pb2.CodeBlock) -> None:
        run = self.run_of(e.call_id, e.depth)
        run.iteration, run.blocks_done = e.iteration, max(run.blocks_done, e.block_index)
        run.code = (run.blocks[run.blocks_done] if run.running_block else e.code)
        run.output = e.stdout + e.stderr
        run.output_error = e.error or e.timed_out

    def _on_sub_call_started(self, e: rlm_pb2.SubCallStarted) -> None:
        self._call(e).model = e.model
        self.depths.setdefault(e.depth, DepthStats()).in_flight += 1

    def _on_sub_call_finished(self, e: rlm_pb2.SubCallFinished) -> None:
        seen = e.call_id in self.calls
        call = self._call(e)
        if call.done:
            return
        stats = self.depths.setdefault(e.depth, DepthStats())
        if seen:
            stats.in_flight = max(0, stats.in_flight - 1)
        call.done, call.error, call.latency = True, e.error, e.latency_seconds
        call.response_preview = e.error_message or e.response_preview
        stats.done += 1
        stats.errors += e.error
        stats.latency_total += e.latency_seconds
        stats.latency_max = max(stats.latency_max, e.latency_seconds)
        if e.HasField("run_usage"):
            self._usage_base, self._usage_since = Totals.of(e.run_usage), Totals()

    def _call(self, e: rlm_pb2.SubCallStarted | rlm_pb2.SubCallFinished) -> CallView:
        call = self.calls.get(e.call_id)
        if call is None:
            call = CallView(e.call_id, e.parent_id, e.depth,
                            e.kind == rlm_pb2.SUB_CALL_KIND_RLM, e.model or e.tool,
                            e.prompt_preview)
            self.calls[e.call_id] = call
            self.run_of(e.parent_id, max(0, e.depth - 1)).calls.append(e.call_id)
        return call

    def _on_heartbeat(self, e: rlm_pb2.Heartbeat) -> None:
        self.elapsed = max(self.elapsed, e.elapsed_seconds)

    def _on_notice(self, e: rlm_pb2.Notice) -> None:
        self.notices = [*self.notices[-2:], f"{e.kind}: {e.message}"]

    def _on_final_answer(self, e: rlm_pb2.FinalAnswer) -> None:
        self.answer, self.iterations, self.forced = e.answer, e.iterations, e.forced
        self.stop_reason, self.elapsed = e.stop_reason, e.duration_seconds
        self._final_usage = Totals.of(e.total_usage)
        self.root.blocks_done = len(self.root.blocks)

    def _on_error(self, e: rlm_pb2.RunError) -> None:
        self.error_code, self.error_message = e.code or "UNKNOWN", e.message
        if e.HasField("total_usage"):
            self._final_usage = Totals.of(e.total_usage)

    # --- outcome -------------------------------------------------------------
    @property
    def exit_code(self) -> int:
        if self.answer is not None:
            if self.forced or self.stop_reason != rlm_pb2.STOP_REASON_ANSWERED:
                return EXIT_PARTIAL
            return EXIT_ANSWERED
        if self.error_code == "INVALID_ARGUMENT":
            return EXIT_BAD_INPUT
        if self.error_code == "CANCELLED":
            return EXIT_CANCELLED
        return EXIT_FAILED

    @property
    def summary(self) -> str:
        """One line: stop reason, iterations, calls, tokens, cost, time."""
        if self.answer is not None:
            reason = STOP_REASONS.get(self.stop_reason, "finished")
        elif self.error_code:
            reason = f"failed: {self.error_code}"
        else:
            reason = "ended without an answer"
        u = self.usage
        iterations = self.iterations or self.root.iteration
        return (f"{reason} · {iterations} iteration{'s' * (iterations != 1)} · "
                f"{u.calls} call{'s' * (u.calls != 1)} · {u.tokens:,} tokens · "
                f"${u.cost_usd:.4f} · {self.elapsed:.1f}s")

