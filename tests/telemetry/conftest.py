"""Fixtures for the telemetry tests: they restore every global they touch."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm_service.telemetry import clear_secrets, shutdown_tracing

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo configure_logging: root handlers, levels, secrets."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    from rlm_service.telemetry.logs import NOISY_LOGGERS

    noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        for name, lvl in noisy.items():
            logging.getLogger(name).setLevel(lvl)
        logging.captureWarnings(False)
        clear_secrets()


@pytest.fixture
def clean_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """No OTEL_* from the developer's shell; tracing shut down afterwards.

    The OpenTelemetry API lets a process set the global tracer provider only
    once, so the fixture records attempts instead of letting one test's
    provider become every later test's global. Yields the recorded providers.
    """
    from opentelemetry import trace

    import rlm_service.telemetry.tracing as tracing_mod

    installed: list[object] = []
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    monkeypatch.setattr(tracing_mod, "_global_is_ours", False)
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OTEL_SDK_DISABLED",
        "OTEL_SERVICE_NAME",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "K_SERVICE",
        "K_REVISION",
        "GOOGLE_CLOUD_PROJECT",
    ):
        monkeypatch.delenv(name, raising=False)
    shutdown_tracing()
    try:
        yield installed
    finally:
        shutdown_tracing()
