"""Model backends: the shared interface and the Gemini / OpenAI-compatible clients."""

from __future__ import annotations

from rlm_service.config import BackendName, Settings
from rlm_service.models._base import (
    DeltaHook,
    GenerateOptions,
    Message,
    ModelBackend,
    ModelError,
    ModelReply,
    RetryHook,
    TokenUsage,
)

__all__ = [
    "DeltaHook",
    "GenerateOptions",
    "Message",
    "ModelBackend",
    "ModelError",
    "ModelReply",
    "RetryHook",
    "TokenUsage",
    "build_backend",
    "build_backends",
]


def build_backend(name: BackendName, settings: Settings) -> ModelBackend:
    # Imported here so a deployment using one provider never loads the other SDK.
    if name == "gemini":
        from rlm_service.models.gemini import GeminiBackend

        return GeminiBackend(settings)
    from rlm_service.models.openai_compat import OpenAIBackend

    return OpenAIBackend(settings)


def build_backends(settings: Settings) -> dict[str, ModelBackend]:
    """The backends the root and sub models need, keyed by backend name.

    Raises ValueError naming the missing setting when a needed backend has no
    credentials or endpoint configured. Also installs the settings' price and
    input-limit overrides in ``rlm_service.models.catalog``.
    """
    from rlm_service.models import catalog

    catalog.configure(settings)
    backends: dict[str, ModelBackend] = {}
    for name in dict.fromkeys((settings.rlm_backend, settings.sub_backend)):
        if not settings.backend_configured(name):
            hint = ("GEMINI_API_KEY, GEMINI_BASE_URL or GOOGLE_GENAI_USE_VERTEXAI"
                    if name == "gemini" else "OPENAI_API_KEY or OPENAI_BASE_URL")
            raise ValueError(f"the {name} backend is needed but not configured: set {hint}")
        backends[name] = build_backend(name, settings)
    return backends
