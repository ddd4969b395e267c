"""configure_logging: Cloud Logging JSON lines, request id, trace fields, redaction."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from rlm_service.telemetry import (
    REDACTED,
    add_secret,
    add_secrets_from,
    configure_logging,
    request_id_var,
    setup_tracing,
    tracer,
)

pytestmark = pytest.mark.usefixtures("restore_logging", "clean_tracing")

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_fields_request_id_and_extra(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    log = logging.getLogger("rlm.test")
    log.debug("hidden at INFO")
    log.info("plain %s", "message")
    token = request_id_var.set("req-123")
    try:
        log.warning("with request", extra={"iteration": 3, "model": "m1"})
    finally:
        request_id_var.reset(token)
    log.error("after request")
    log.critical("last")

    plain, with_req, after, last = lines(capsys)
    assert plain["severity"] == "INFO"
    assert plain["message"] == "plain message"
    assert plain["logger"] == "rlm.test"
    assert RFC3339.match(plain["time"])
    assert "request_id" not in plain
    assert "logging.googleapis.com/trace" not in plain
    assert plain["logging.googleapis.com/sourceLocation"]["function"] == (
        "test_fields_request_id_and_extra"
    )

    assert with_req["severity"] == "WARNING"
    assert with_req["request_id"] == "req-123"
    assert with_req["iteration"] == 3 and with_req["model"] == "m1"
    assert "request_id" not in after and after["severity"] == "ERROR"
    assert last["severity"] == "CRITICAL"


def test_trace_fields_inside_span(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-proj")
    configure_logging("DEBUG")
    setup_tracing(exporter=InMemorySpanExporter())
    log = logging.getLogger("rlm.test")
    with tracer().start_as_current_span("work") as span:
        log.debug("in span")
        ctx = span.get_span_context()
    log.info("outside")

    inside, outside = lines(capsys)
    trace_id = format(ctx.trace_id, "032x")
    assert inside["severity"] == "DEBUG"
    assert inside["logging.googleapis.com/trace"] == f"projects/my-proj/traces/{trace_id}"
    assert inside["logging.googleapis.com/spanId"] == format(ctx.span_id, "016x")
    assert inside["logging.googleapis.com/trace_sampled"] is True
    assert "logging.googleapis.com/trace" not in outside


def test_bare_trace_id_without_project(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging()
    setup_tracing(exporter=InMemorySpanExporter())
    with tracer().start_as_current_span("work") as span:
        logging.getLogger("x").info("hi")
        trace_id = format(span.get_span_context().trace_id, "032x")
    (line,) = lines(capsys)
    assert line["logging.googleapis.com/trace"] == trace_id


def test_secrets_redacted_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "AIzaSy-very-secret-key-123"
    configure_logging()
    add_secret(secret)
    add_secret("abc")  # too short to redact safely: ignored
    log = logging.getLogger("rlm.test")
    log.info("calling with key=%s (abc stays)", secret)
    log.info("extra", extra={"url": f"https://x/?key={secret}", "nested": {"k": [secret]}})
    try:
        raise ValueError(f"401 for key {secret}")
    except ValueError:
        log.exception("model call failed")

    out = capsys.readouterr().out
    assert secret not in out
    first, second, third = (json.loads(line) for line in out.splitlines())
    assert first["message"] == f"calling with key={REDACTED} (abc stays)"
    assert second["url"] == f"https://x/?key={REDACTED}"
    assert second["nested"] == {"k": [REDACTED]}
    assert third["severity"] == "ERROR"
    assert third["exception_type"] == "ValueError"
    assert f"401 for key {REDACTED}" in third["exception"]
    assert "Traceback" in third["exception"]


def test_secrets_from_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from rlm_service.config import Settings

    configure_logging()
    add_secrets_from(Settings(_env_file=None,  # type: ignore[call-arg]
                              gemini_api_key=SecretStr("gemini-secret-value"), port=8080))
    logging.getLogger("t").warning("key gemini-secret-value")
    (line,) = lines(capsys)
    assert line["message"] == f"key {REDACTED}"


def test_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    configure_logging("WARNING")
    root = logging.getLogger()
    ours = [h for h in root.handlers if type(h).__name__ == "_StdoutHandler"]
    assert len(ours) == 1
    logging.getLogger("t").info("dropped at WARNING")
    logging.getLogger("t").warning("once")
    assert [line["message"] for line in lines(capsys)] == ["once"]


def test_bad_level() -> None:
    with pytest.raises(ValueError):
        configure_logging("LOUD")


def test_real_stdout_in_subprocess() -> None:
    """Every line a process writes is one JSON object, even from a fresh interpreter."""
    code = (
        "import logging\n"
        "from rlm_service.telemetry import configure_logging, request_id_var\n"
        "configure_logging('INFO')\n"
        "request_id_var.set('r-1')\n"
        "logging.getLogger('sub').info('hello\\nworld')\n"
        "logging.getLogger('grpc').info('quiet library')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["message"] == "hello\nworld"
    assert line["request_id"] == "r-1"
    assert line["severity"] == "INFO"
