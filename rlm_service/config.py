"""Service settings, read from the environment (and an optional ``.env`` file).

Every setting has an upper-case environment variable of the same name. The
README's settings table is the user-facing copy of this file.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BackendName = Literal["gemini", "openai"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- server -----------------------------------------------------------
    port: int = Field(8080, ge=0, le=65535)
    host: str = "[::]"
    max_message_bytes: int = Field(256 * 1024 * 1024, ge=4 * 1024 * 1024)
    metrics_port: int = Field(9090, ge=0, le=65535)
    # The HTTP/JSON face and progress page; -1 turns it off.
    http_port: int = Field(8081, ge=-1, le=65535)
    http_host: str = "0.0.0.0"
    shutdown_grace_seconds: float = Field(8.0, ge=0)
    heartbeat_seconds: float = Field(15.0, gt=0)
    max_concurrent_runs: int = Field(32, ge=1)
    # Telemetry. Tracing itself is configured by the standard OTEL_* variables
    # (see rlm_service/telemetry/tracing.py); only the service name is here.
    metrics_host: str = "0.0.0.0"
    log_level: str = Field("INFO", pattern=r"(?i)^(debug|info|warning|warn|error|critical)$")
    log_debug: bool = False
    otel_service_name: str = "rlm-service"

    # --- models -----------------------------------------------------------
    rlm_backend: BackendName = "gemini"
    rlm_sub_backend: BackendName | None = None
    gemini_api_key: SecretStr | None = None
    gemini_model_name: str = "gemini-2.5-flash"
    gemini_sub_model_name: str | None = None
    gemini_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model_name: str = "gpt-4o-mini"
    openai_sub_model_name: str | None = None
    model_timeout_seconds: float = Field(120.0, gt=0)
    model_max_retries: int = Field(4, ge=0)
    model_retry_base_seconds: float = Field(0.5, ge=0)
    model_retry_max_seconds: float = Field(30.0, ge=0)
    max_concurrent_model_calls: int = Field(64, ge=1)
    # Catalog overrides (see rlm_service/models/catalog.py), JSON in the environment:
    # MODEL_PRICES_JSON='{"my-model": {"input": 0.1, "output": 0.4, "cached": 0.025}}'
    # (USD per 1M tokens; optional "long_threshold", "long_input", "long_output",
    # "long_cached" for prompts above a size) and
    # MODEL_INPUT_LIMITS_JSON='{"my-model": 32768}'. Keys match exactly or as the
    # longest prefix of a model name.
    model_prices_json: dict[str, dict[str, float]] = Field(default_factory=dict)
    model_input_limits_json: dict[str, int] = Field(default_factory=dict)
    model_default_input_limit: int = Field(default=128_000, ge=1)

    # --- runs ---------------------------------------------------------------
    default_max_iterations: int = Field(30, ge=1)
    max_iterations_limit: int = Field(200, ge=1)
    default_max_depth: int = Field(1, ge=1)
    max_depth_limit: int = Field(4, ge=1)
    default_timeout_seconds: float = Field(900.0, gt=0)
    max_timeout_seconds: float = Field(3600.0, gt=0)
    max_output_chars: int = Field(20_000, ge=100)
    batch_concurrency: int = Field(16, ge=1)
    child_run_concurrency: int = Field(4, ge=1)
    max_batch_prompts: int = Field(5000, ge=1)
    max_prompt_chars: int = Field(1_000_000, ge=1)

    # --- runs that outlive their connection (rlm_service/runs/) ----------------
    max_detach_grace_seconds: float = Field(600.0, ge=0)
    run_replay_events: int = Field(10_000, ge=10)
    run_replay_max_mb: int = Field(64, ge=1)
    run_retention_seconds: float = Field(300.0, ge=0)
    # Structured answers (rlm_service/run/answer_schema.py).
    answer_schema_max_retries: int = Field(2, ge=0, le=20)
    # Sessions (rlm_service/sessions/): each holds a sandboxed REPL while open.
    max_sessions: int = Field(100, ge=0)
    # Compaction (rlm_service/run/compaction.py): share of the root model's input
    # limit at which older turns are summarised; 0 = off (trimming only).
    compaction_threshold: float = Field(0.0, ge=0, le=1)
    session_idle_ttl_seconds: float = Field(900.0, gt=0)

    # --- sandbox ------------------------------------------------------------
    # Comma-separated sandbox layers the service may run without, or "all".
    sandbox_allow_missing: str = ""
    sandbox_uid_base: int = Field(200_000, ge=1000)
    sandbox_uid_count: int = Field(10_000, ge=1)
    sandbox_memory_mb: int = Field(2048, ge=64)
    sandbox_cpu_seconds: int = Field(600, ge=1)
    sandbox_max_processes: int = Field(64, ge=4)
    sandbox_max_open_files: int = Field(256, ge=32)
    sandbox_max_file_mb: int = Field(512, ge=1)
    sandbox_tmp_mb: int = Field(512, ge=1)
    sandbox_block_timeout_seconds: float = Field(120.0, gt=0)
    sandbox_pool_size: int = Field(2, ge=0)
    sandbox_python: str | None = None
    runtime_dir: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_max_iterations > self.max_iterations_limit:
            raise ValueError("DEFAULT_MAX_ITERATIONS exceeds MAX_ITERATIONS_LIMIT")
        if self.default_max_depth > self.max_depth_limit:
            raise ValueError("DEFAULT_MAX_DEPTH exceeds MAX_DEPTH_LIMIT")
        return self

    @cached_property
    def sub_backend(self) -> BackendName:
        return self.rlm_sub_backend or self.rlm_backend

    def default_model(self, backend: BackendName, *, sub: bool) -> str:
        if backend == "gemini":
            return (self.gemini_sub_model_name if sub else None) or self.gemini_model_name
        return (self.openai_sub_model_name if sub else None) or self.openai_model_name

    def backend_configured(self, backend: BackendName) -> bool:
        if backend == "gemini":
            return bool(self.gemini_api_key or self.gemini_base_url) or vertex_configured()
        return bool(self.openai_api_key or self.openai_base_url)


def vertex_configured() -> bool:
    import os

    return os.environ.get("GOOGLE_GENAI_USE_VERTEXAI", "").lower() in {"1", "true", "yes"}
