"""What a request reports while it works, as plain domain values.

The runs emit these; the edge (rlm_service/event_sink.py) turns them into wire
messages, so no run code knows the protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rlm_service.budget import Limits, Usage


@dataclass(frozen=True)
class RunStarted:
    request_id: str
    model: str
    sub_model: str
    limits: Limits
    context_type: str
    context_chars: int
    sandbox_layers: tuple[str, ...]
    depth: int
    call_id: str


@dataclass(frozen=True)
class RootTextDelta:
    iteration: int
    text: str
    depth: int
    call_id: str


@dataclass(frozen=True)
class RootTurn:
    iteration: int
    text: str
    usage: Usage
    latency_seconds: float
    depth: int
    call_id: str


@dataclass(frozen=True)
class CodeBlock:
    iteration: int
    block_index: int
    code: str
    stdout: str
    stderr: str
    error: bool
    duration_seconds: float
    truncated: bool
    timed_out: bool
    repl_restarted: bool
    depth: int
    call_id: str


@dataclass(frozen=True)
class SubCallStarted:
    call_id: str
    parent_id: str
    depth: int
    model: str
    recursive: bool
    prompt_preview: str
    # An operator HTTP tool's name (model empty, the preview holds its arguments).
    tool: str = ""


@dataclass(frozen=True)
class SubCallFinished:
    call_id: str
    parent_id: str
    depth: int
    model: str
    recursive: bool
    prompt_preview: str
    response_preview: str
    # The sub-call's own model call; None for a child run (its turns report theirs).
    usage: Usage | None
    latency_seconds: float
    error: bool
    error_message: str
    fell_back_to_llm: bool
    # The whole request's usage so far.
    request_usage: Usage
    tool: str = ""


@dataclass(frozen=True)
class Notice:
    """Something a client may want to know: kind is model_retry, history_trimmed,
    rlm_query_fallback or repl_restarted."""

    kind: str
    message: str
    depth: int
    call_id: str = ""


RunEvent = RunStarted | RootTextDelta | RootTurn | CodeBlock | SubCallStarted | \
    SubCallFinished | Notice

# Where a request's runs send their events; called on the event loop, must not block.
Emit = Callable[[RunEvent], None]
