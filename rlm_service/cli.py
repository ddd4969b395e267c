"""The ``rlm-server`` command. The ``rlm`` client command lives in clients/python/rlm_client."""

from __future__ import annotations

import asyncio
import sys

from pydantic import ValidationError


def server_main() -> None:
    from rlm_service.config import Settings
    from rlm_service.repl import SandboxUnavailable
    from rlm_service.server import serve
    from rlm_service.telemetry.logs import add_secrets_from, configure_logging

    try:
        settings = Settings()
    except ValidationError as exc:
        sys.exit(f"rlm-server: invalid settings:\n{exc}")
    configure_logging(settings.log_level, settings.log_debug)
    add_secrets_from(settings)
    if not settings.backend_configured(settings.rlm_backend) or not settings.backend_configured(
            settings.sub_backend):
        sys.exit(
            "rlm-server: no model endpoint configured. Set GEMINI_API_KEY (or GEMINI_BASE_URL "
            "for a Gemini-API-compatible server, or GOOGLE_GENAI_USE_VERTEXAI=true); for "
            "RLM_BACKEND=openai set OPENAI_API_KEY or OPENAI_BASE_URL; for RLM_BACKEND=replay "
            "set RLM_REPLAY_CASSETTE (RLM_BACKEND=scripted needs nothing)."
        )
    try:
        asyncio.run(serve(settings))
    except SandboxUnavailable as exc:
        sys.exit(f"rlm-server: {exc}")
    except ValueError as exc:  # build_backends: a backend that cannot be set up (e.g. a cassette)
        sys.exit(f"rlm-server: {exc}")
    except OSError as exc:  # a port that is taken; start-up has undone itself already
        sys.exit(f"rlm-server: could not start: {exc}")
    except KeyboardInterrupt:
        pass
