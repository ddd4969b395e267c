"""Structured JSON logs for Cloud Logging: one JSON object per line on stdout.

Cloud Run's logging agent parses each stdout line that is a JSON object and
lifts the special fields: ``severity``, ``message``, ``time``,
``logging.googleapis.com/trace``, ``logging.googleapis.com/spanId``,
``logging.googleapis.com/trace_sampled`` and
``logging.googleapis.com/sourceLocation``. Everything else lands in
``jsonPayload``.

Secrets registered with ``add_secret`` are replaced by ``[REDACTED]`` in the
message, in ``extra=`` fields and in formatted exceptions, since exception
messages from HTTP clients can carry API keys in URLs or headers.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "REDACTED",
    "CloudLoggingFormatter",
    "add_secret",
    "add_secrets_from",
    "api_key_id_var",
    "clear_secrets",
    "configure_logging",
    "redact",
    "request_id_var",
]

REDACTED: Final = "[REDACTED]"

request_id_var: ContextVar[str | None] = ContextVar("rlm_request_id", default=None)
"""The request being served; set it at the start of a run (contextvars follow tasks)."""
api_key_id_var: ContextVar[str | None] = ContextVar("rlm_api_key_id", default=None)
"""The API key id of the request being served (rlm_service/auth.py), when keys are on."""

# Shorter strings are too likely to occur by chance (and would shred logs).
_MIN_SECRET_LEN: Final = 6

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None

# Libraries that log every request at INFO/DEBUG; quiet unless debugging.
NOISY_LOGGERS: Final = (
    "asyncio",
    "grpc",
    "httpx",
    "httpcore",
    "aiohttp",
    "urllib3",
    "google_genai",
    "google.auth",
    "openai",
)


def add_secret(value: object) -> None:
    """Register a string (or pydantic ``SecretStr``) never to appear in logs."""
    global _secret_re
    get_secret = getattr(value, "get_secret_value", None)
    if callable(get_secret):
        value = get_secret()
    if not isinstance(value, str) or len(value) < _MIN_SECRET_LEN:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Longest first so a secret containing another is replaced whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_re = re.compile("|".join(map(re.escape, ordered)))


def add_secrets_from(settings: object) -> None:
    """Register every ``SecretStr`` attribute of a pydantic settings object."""
    fields: Mapping[str, Any] = getattr(type(settings), "model_fields", {})
    for name in fields:
        value = getattr(settings, name, None)
        if hasattr(value, "get_secret_value"):
            add_secret(value)


def clear_secrets() -> None:
    global _secret_re
    with _secrets_lock:
        _secrets.clear()
        _secret_re = None


def redact(value: Any) -> Any:
    """``value`` with registered secrets replaced, recursing into containers."""
    pattern = _secret_re
    if pattern is None:
        return value
    return _redact(value, pattern)


def _redact(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(REDACTED, value)
    if isinstance(value, dict):
        return {_redact(k, pattern): _redact(v, pattern) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(v, pattern) for v in value]
    if isinstance(value, bytes | int | float | bool) or value is None:
        return value
    # Arbitrary objects are rendered by the JSON encoder with str()/repr();
    # render here so that text is redacted too.
    text = str(value)
    return pattern.sub(REDACTED, text) if pattern.search(text) else value


def _severity(levelno: int) -> str:
    if levelno >= logging.CRITICAL:
        return "CRITICAL"
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARNING"
    if levelno >= logging.INFO:
        return "INFO"
    if levelno >= logging.DEBUG:
        return "DEBUG"
    return "DEFAULT"


def _rfc3339(created: float) -> str:
    return (
        datetime.fromtimestamp(created, tz=UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


class CloudLoggingFormatter(JsonFormatter):
    """python-json-logger formatter producing Cloud Logging's structured fields."""

    def __init__(self, project: str | None = None) -> None:
        super().__init__(json_ensure_ascii=False)
        self.project = project

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        log_data["severity"] = _severity(record.levelno)
        log_data["message"] = record.getMessage() if not isinstance(record.msg, dict) else ""
        log_data["time"] = _rfc3339(record.created)
        log_data["logger"] = record.name
        request_id = request_id_var.get()
        if request_id is not None:
            log_data["request_id"] = request_id
        api_key_id = api_key_id_var.get()
        if api_key_id is not None:
            log_data["api_key_id"] = api_key_id
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            trace_id = format(span_context.trace_id, "032x")
            log_data["logging.googleapis.com/trace"] = (
                f"projects/{self.project}/traces/{trace_id}" if self.project else trace_id
            )
            log_data["logging.googleapis.com/spanId"] = format(span_context.span_id, "016x")
            log_data["logging.googleapis.com/trace_sampled"] = span_context.trace_flags.sampled
        log_data["logging.googleapis.com/sourceLocation"] = {
            "file": record.pathname,
            "line": str(record.lineno),
            "function": record.funcName,
        }
        exc = message_dict.pop("exc_info", None)
        if exc:
            log_data["exception"] = exc
        stack = message_dict.pop("stack_info", None)
        if stack:
            log_data["stack_info"] = stack
        if record.exc_info and record.exc_info[0] is not None:
            log_data["exception_type"] = record.exc_info[0].__name__
        # dict messages (logger.info({...})) and extra= fields; the standard
        # record attributes are skipped and our fields are never overwritten.
        for key, value in message_dict.items():
            log_data.setdefault(key, value)
        for key, value in record.__dict__.items():
            if key not in RESERVED_ATTRS and key not in ("message", "asctime"):
                log_data.setdefault(key, value)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        redacted: dict[str, Any] = redact(log_data)
        return redacted


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is at emit time.

    Looking it up per record keeps output going to the right place when
    stdout is replaced after configuration (pytest's capture, reloaders).
    """

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def configure_logging(level: str = "INFO", debug: bool = False) -> None:
    """Send all logging to stdout as Cloud Logging JSON lines.

    ``level`` is a standard level name (case-insensitive). ``debug`` forces
    DEBUG and also lets the chatty client libraries log below WARNING.
    Calling it again replaces the previous configuration instead of adding a
    second handler. ``GOOGLE_CLOUD_PROJECT`` (read on each call) makes the
    trace field the full resource name Cloud Logging links to Cloud Trace.
    """
    numeric = logging.DEBUG if debug else logging.getLevelName(level.strip().upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _StdoutHandler):
            root.removeHandler(existing)
            existing.close()
    handler = _StdoutHandler(sys.stdout)
    project = os.environ.get("GOOGLE_CLOUD_PROJECT", "").strip() or None
    handler.setFormatter(CloudLoggingFormatter(project=project))
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    logging.captureWarnings(True)
