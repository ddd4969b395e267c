"""Plain lines for one event, for output that is not a terminal (logs, pipes, CI)."""

from __future__ import annotations

from rlm_service._gen.rlm.v1 import rlm_pb2


def _indent(depth: int) -> str:
    return "  " * depth


def _clip(text: str, limit: int = 200) -> str:
    text = text.strip().replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain_lines(event: rlm_pb2.CompletionEvent) -> list[str]:
    kind = event.WhichOneof("event")
    if kind == "run_started":
        e = event.run_started
        return [f"{_indent(e.depth)}run started: {e.root_model} (sub {e.sub_model}), "
                f"context {e.context_type} {e.context_chars:,} chars"
                + (f", request {e.request_id}" if e.depth == 0 else "")]
    if kind == "root_turn":
        t = event.root_turn
        return [f"{_indent(t.depth)}iteration {t.iteration}: {t.latency_seconds:.2f}s, "
                f"{t.usage.prompt_tokens + t.usage.output_tokens + t.usage.thinking_tokens:,}"
                f" tokens: {_clip(t.text)}"]
    if kind == "code_block":
        b = event.code_block
        flag = " TIMED OUT" if b.timed_out else " ERROR" if b.error else ""
        out = [f"{_indent(b.depth)}block {b.iteration}.{b.block_index}: "
               f"{b.duration_seconds:.2f}s{flag}"]
        out += [f"{_indent(b.depth)}  | {line}" for line in (b.stdout + b.stderr).splitlines()]
        return out
    if kind == "sub_call_started":
        s = event.sub_call_started
        what = ("rlm_query" if s.kind == rlm_pb2.SUB_CALL_KIND_RLM else
                f"tool {s.tool}" if s.kind == rlm_pb2.SUB_CALL_KIND_TOOL else "llm_query")
        return [f"{_indent(s.depth)}{what} {s.call_id} started: {_clip(s.prompt_preview, 80)}"]
    if kind == "sub_call_finished":
        f = event.sub_call_finished
        state = "failed" if f.error else "done"
        return [f"{_indent(f.depth)}sub-call {f.call_id} {state} in {f.latency_seconds:.2f}s: "
                f"{_clip(f.error_message or f.response_preview, 80)}"]
    if kind == "notice":
        n = event.notice
        return [f"{_indent(n.depth)}notice {n.kind}: {n.message}"]
    if kind == "error":
        return [f"error: {event.error.code}: {event.error.message}"]
    # Heartbeats keep proxies awake; final answers are printed by the caller.
    return []
