"""Model backends: the shared interface and the Gemini / OpenAI-compatible clients.

Behaviour common to both backends (see ``_retry.py`` for the policy):

* Retried: 429, 408/5xx, transport errors, dropped connections, malformed
  responses, per-call timeouts, and empty answers (at most twice). Not retried:
  other 4xx, safety stops, blocked prompts, MAX_TOKENS.
* Final failures are ``ModelError`` with: RESOURCE_EXHAUSTED/rate_limited,
  UNAVAILABLE/unavailable|malformed|empty, DEADLINE_EXCEEDED/timeout,
  INVALID_ARGUMENT/bad_request|prompt_too_large, PERMISSION_DENIED/
  permission_denied, NOT_FOUND/not_found, FAILED_PRECONDITION/safety|blocked|
  max_tokens, INTERNAL/internal. ``usage`` adds up every billed attempt.
* A streamed attempt that fails after some deltas were delivered is retried
  from the start: ``on_retry`` firing is the caller's signal to drop the text
  streamed so far.
* ``max_concurrent_model_calls`` bounds attempts in flight per backend; the
  wait for a slot counts against the deadline, not the per-call timeout.
"""

from __future__ import annotations

from rlm_service.config import BackendName, Settings
from rlm_service.models._base import (
    AttemptHook,
    DeltaHook,
    GenerateOptions,
    Message,
    ModelBackend,
    ModelError,
    ModelReply,
    RetryHook,
    TokenUsage,
)
from rlm_service.models.catalog import ModelCatalog, estimate_tokens
from rlm_service.models.limiter import FairLimiter, Limiter

__all__ = [
    "AttemptHook",
    "DeltaHook",
    "GenerateOptions",
    "Message",
    "ModelBackend",
    "ModelCatalog",
    "ModelError",
    "ModelReply",
    "RetryHook",
    "TokenUsage",
    "build_backend",
    "build_backends",
    "estimate_tokens",
]


def build_backend(name: BackendName, settings: Settings,
                  limiter: Limiter | None = None) -> ModelBackend:
    # Imported here so a deployment using one provider never loads the other SDK.
    if name == "scripted":  # offline backends: no network, no key
        from rlm_service.models.scripted import ScriptedBackend

        return ScriptedBackend(settings)
    if name == "replay":
        from rlm_service.models.cassette import ReplayBackend

        return ReplayBackend.from_settings(settings)
    if name == "gemini":
        from rlm_service.models.gemini import GeminiBackend

        return GeminiBackend(settings, limiter)
    from rlm_service.models.openai_compat import OpenAIBackend

    return OpenAIBackend(settings, limiter)


def build_backends(settings: Settings) -> dict[str, ModelBackend]:
    """The backends the root and sub models need, keyed by backend name.

    Raises ValueError naming the missing setting when a needed backend has no
    credentials or endpoint configured.
    """
    backends: dict[str, ModelBackend] = {}
    # One cap on model calls in flight for the whole process, whichever backend serves them.
    # Shared fairly between requests (see limiter.py).
    limiter = FairLimiter(settings.max_concurrent_model_calls, settings.model_call_reserve)
    for name in dict.fromkeys((settings.rlm_backend, settings.sub_backend)):
        if not settings.backend_configured(name):
            hint = ("GEMINI_API_KEY, GEMINI_BASE_URL or GOOGLE_GENAI_USE_VERTEXAI"
                    if name == "gemini" else "RLM_REPLAY_CASSETTE" if name == "replay"
                    else "OPENAI_API_KEY or OPENAI_BASE_URL")
            raise ValueError(f"the {name} backend is needed but not configured: set {hint}")
        backends[name] = build_backend(name, settings, limiter)
    if settings.rlm_record:
        from rlm_service.models.cassette import record_all

        backends = record_all(backends, settings.rlm_record)
    return backends
