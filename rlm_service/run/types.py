"""What goes into a request and what comes out: the spec, the answer, the failures.

"Request" is the whole client request; "run" is one RLM loop at one depth."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlm_service.budget import Limits, ModelUsage, StopReason, Usage
from rlm_service.models import GenerateOptions
from rlm_service.run.answer_schema import AnswerSchema

if TYPE_CHECKING:
    from rlm_service.sessions.store import Session


@dataclass(frozen=True)
class RequestSpec:
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
    # Seconds the run outlives a dropped stream (rlm_service/runs/); 0 cancels it.
    detach_grace_seconds: float = 0.0
    # The JSON Schema the answer must match (rlm_service/run/answer_schema.py).
    answer_schema: AnswerSchema | None = None
    # The session the request runs in (rlm_service/sessions/): its REPL and history.
    session: Session | None = None
    # The operator tools the request narrowed its runs to; None = all of them.
    tools: frozenset[str] | None = None
    # The time limit counts from here, the request's arrival: a request that
    # first waits for a slot must still end before the client's deadline.
    received: float = field(default_factory=time.monotonic)


# The name build_spec (servicer.py) constructs; one spec per request.
RunSpec = RequestSpec


@dataclass(frozen=True)
class RunResult:
    """How one run (one depth) ended."""

    answer: str
    iterations: int
    forced: bool
    schema_retries: int = 0


@dataclass(frozen=True)
class FinalAnswer:
    """How the request ended, when it ended with an answer."""

    request_id: str
    answer: str
    iterations: int
    forced: bool
    stop_reason: StopReason
    usage: list[ModelUsage]
    total_usage: Usage
    duration_seconds: float
    # With an answer schema: the validated JSON value (has_value says it is set,
    # since JSON null is a value too) and how many answers were sent back.
    value: Any = None
    has_value: bool = False
    schema_retries: int = 0


class ErrorKind(enum.Enum):
    """Why a request failed. rlm_service/errors.py maps each to a gRPC and an HTTP status."""

    INVALID_REQUEST = "invalid_request"
    SHUTTING_DOWN = "shutting_down"
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"
    INTERNAL = "internal"
    MODEL_RATE_LIMITED = "model_rate_limited"
    MODEL_UNAVAILABLE = "model_unavailable"
    MODEL_TIMEOUT = "model_timeout"
    MODEL_BAD_REQUEST = "model_bad_request"
    MODEL_PERMISSION_DENIED = "model_permission_denied"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_REFUSED = "model_refused"
    REPLAY_MISS = "replay_miss"  # the replay backend has no recording of this call
    MODEL_INTERNAL = "model_internal"
    CONTEXT_NOT_FOUND = "context_not_found"
    CONTEXT_TOO_LARGE = "context_too_large"
    OVERLOADED = "overloaded"
    # Run control (rlm_service/runs/): WatchRun, CancelRun, GetRun.
    RUN_NOT_FOUND = "run_not_found"
    RUN_ACCESS_DENIED = "run_access_denied"
    RUN_REPLAY_GONE = "run_replay_gone"
    RUN_CANCELLED = "run_cancelled"
    # The model's answer never matched answer_schema within the retries.
    ANSWER_INVALID = "answer_invalid"
    # Sessions (rlm_service/sessions/).
    SESSION_NOT_FOUND = "session_not_found"
    SESSION_ACCESS_DENIED = "session_access_denied"
    SESSION_BUSY = "session_busy"
    SESSION_LIMIT = "session_limit"


class RequestFailed(Exception):
    """The request cannot go on; it ends with an error instead of an answer."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# ModelError.kind (see rlm_service/models/__init__.py) -> why a root-model failure
# ends the request.
_MODEL_FAILURES: dict[str, ErrorKind] = {
    "rate_limited": ErrorKind.MODEL_RATE_LIMITED,
    "unavailable": ErrorKind.MODEL_UNAVAILABLE,
    "malformed": ErrorKind.MODEL_UNAVAILABLE,
    "empty": ErrorKind.MODEL_UNAVAILABLE,
    "timeout": ErrorKind.MODEL_TIMEOUT,
    "bad_request": ErrorKind.MODEL_BAD_REQUEST,
    "prompt_too_large": ErrorKind.MODEL_BAD_REQUEST,
    "permission_denied": ErrorKind.MODEL_PERMISSION_DENIED,
    "not_found": ErrorKind.MODEL_NOT_FOUND,
    "safety": ErrorKind.MODEL_REFUSED,
    "blocked": ErrorKind.MODEL_REFUSED,
    "max_tokens": ErrorKind.MODEL_REFUSED,
    "internal": ErrorKind.MODEL_INTERNAL,
    "replay_miss": ErrorKind.REPLAY_MISS,
}


def model_failure(kind: str) -> ErrorKind:
    """A kind a backend adds later is a provider outage until it is named here."""
    return _MODEL_FAILURES.get(kind, ErrorKind.MODEL_UNAVAILABLE)
