"""Service settings, read from the environment (and an optional ``.env`` file).

Every setting has an upper-case environment variable of the same name. The
README's settings table is the user-facing copy of this file.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# "scripted" and "replay" are the offline backends (rlm_service/models/scripted.py, replay.py).
BackendName = Literal["gemini", "openai", "scripted", "replay"]


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
    # Requests waiting for a run slot at most; more are refused with RESOURCE_EXHAUSTED.
    max_queued_runs: int = Field(64, ge=0)
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
    # Vertex AI instead of the Gemini API; project, location and credentials come
    # from the SDK's own variables (GOOGLE_CLOUD_PROJECT, GOOGLE_API_KEY, ADC).
    google_genai_use_vertexai: bool = False
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model_name: str = "gpt-4o-mini"
    openai_sub_model_name: str | None = None
    model_timeout_seconds: float = Field(120.0, gt=0)
    model_max_retries: int = Field(4, ge=0)
    model_retry_base_seconds: float = Field(0.5, ge=0)
    model_retry_max_seconds: float = Field(30.0, ge=0)
    max_concurrent_model_calls: int = Field(64, ge=1)
    # Of those, slots only requests holding fewer than this many may take, so a
    # small run's calls start at once next to a wide batch (models/limiter.py).
    model_call_reserve: int = Field(4, ge=0)
    # Catalog overrides (see rlm_service/models/catalog.py), JSON in the environment:
    # MODEL_PRICES_JSON='{"my-model": {"input": 0.1, "output": 0.4, "cached": 0.025}}'
    # (USD per 1M tokens; optional "long_threshold", "long_input", "long_output",
    # "long_cached" for prompts above a size) and
    # MODEL_INPUT_LIMITS_JSON='{"my-model": 32768}'. Keys match exactly or as the
    # longest prefix of a model name.
    model_prices_json: dict[str, dict[str, float]] = Field(default_factory=dict)
    model_input_limits_json: dict[str, int] = Field(default_factory=dict)
    model_default_input_limit: int = Field(default=128_000, ge=1)
    # --- offline backends and cassettes (rlm_service/models/scripted.py, cassette.py) ---
    scripted_delay_seconds: float = Field(0.0, ge=0, le=10)
    rlm_record: str | None = None
    rlm_replay_cassette: str | None = None

    # --- runs ---------------------------------------------------------------
    default_max_iterations: int = Field(30, ge=1)
    max_iterations_limit: int = Field(200, ge=1)
    default_max_depth: int = Field(1, ge=1)
    max_depth_limit: int = Field(4, ge=1)
    default_timeout_seconds: float = Field(900.0, gt=0)
    max_timeout_seconds: float = Field(3600.0, gt=0)
    max_output_chars: int = Field(20_000, ge=100)
    # Per request; the process-wide limiter shares max_concurrent_model_calls fairly,
    # so one request may use it all when alone.
    batch_concurrency: int = Field(64, ge=1)
    child_run_concurrency: int = Field(4, ge=1)
    max_batch_prompts: int = Field(5000, ge=1)
    max_prompt_chars: int = Field(1_000_000, ge=1)
    # JSON levels of list/object in a request's context. gRPC's protobuf parser
    # stops at 100 message levels (about 49 JSON levels) whatever this says.
    max_context_depth: int = Field(32, ge=1)

    # --- spend ceilings (edge) -------------------------------------------------
    # DEFAULT_* applies when a request leaves the field 0; a request may lower it
    # but never ask for more than *_LIMIT (refused). A *_LIMIT of 0 = no ceiling.
    default_max_llm_calls: int = Field(1000, ge=0)
    max_llm_calls_limit: int = Field(10_000, ge=0)
    default_max_total_tokens: int = Field(20_000_000, ge=0)
    max_total_tokens_limit: int = Field(200_000_000, ge=0)
    default_max_cost_usd: float = Field(5.0, ge=0, allow_inf_nan=False)
    max_cost_usd_limit: float = Field(50.0, ge=0, allow_inf_nan=False)

    # --- authentication (edge; see docs/security.md) ---------------------------
    # Either or both: a file of ``id:sha256hex`` lines (re-read when it changes)
    # and the same lines, comma- or newline-separated, in a secret variable.
    api_keys_file: str | None = None
    api_keys: SecretStr | None = None
    api_key_max_concurrent_runs: int = Field(0, ge=0)
    api_key_max_usd_per_window: float = Field(0.0, ge=0, allow_inf_nan=False)
    api_key_window_seconds: float = Field(3600.0, gt=0, allow_inf_nan=False)
    # Google-signed ID tokens (Cloud Run IAM) as an alternative credential.
    google_id_token_audience: str | None = None
    google_id_token_emails: str = ""
    google_id_token_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    grpc_reflection: bool = True

    # --- uploaded contexts (UploadContext) --------------------------------
    context_upload_max_bytes: int = Field(1 << 30, ge=1)
    # All stored and arriving uploads together, on the runtime dir's disk.
    context_upload_total_bytes: int = Field(4 << 30, ge=1)
    context_upload_ttl_seconds: float = Field(900.0, gt=0)

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

    # --- operator tools (rlm_service/tools/) ----------------------------------------
    # A .py file or package folder whose public documented functions the REPL gets;
    # mounted read-only into the sandbox and run there, never imported by the server.
    tools_module: str | None = None
    # A JSON file of host-side HTTP tools the service calls for the REPL.
    http_tools_file: str | None = None
    # host or host:port entries, comma-separated; a declared tool elsewhere fails start-up.
    http_tools_allowed_hosts: str = ""
    http_tools_timeout_seconds: float = Field(10.0, gt=0, le=600)
    # Largest reply body (and arguments) of one HTTP tool call.
    http_tools_max_bytes: int = Field(1 << 20, ge=1)
    # HTTP tool calls per request, all depths together; 0 = no limit.
    http_tools_max_calls: int = Field(100, ge=0)
    # The tools rlm_query's child runs get: "*" = the root run's, "" = none, or names.
    child_run_tools: str = "*"

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
    # Files and folders the sandbox's /tmp and /dev/shm may hold together; 0 = no cap.
    sandbox_tmp_files: int = Field(20_000, ge=0)
    sandbox_block_timeout_seconds: float = Field(120.0, gt=0)
    sandbox_pool_size: int = Field(2, ge=0)
    sandbox_pool_max: int = Field(16, ge=0)
    sandbox_pool_idle_seconds: float = Field(30.0, gt=0)
    sandbox_python: str | None = None
    runtime_dir: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_max_iterations > self.max_iterations_limit:
            raise ValueError("DEFAULT_MAX_ITERATIONS exceeds MAX_ITERATIONS_LIMIT")
        if self.default_max_depth > self.max_depth_limit:
            raise ValueError("DEFAULT_MAX_DEPTH exceeds MAX_DEPTH_LIMIT")
        for name in ("max_llm_calls", "max_total_tokens", "max_cost_usd"):
            default, limit = getattr(self, f"default_{name}"), getattr(self, f"{name}_limit")
            # A default of 0 (no cap) under a ceiling would let every request past it.
            if limit and not 0 < default <= limit:
                raise ValueError(f"DEFAULT_{name.upper()} must be > 0 and <= "
                                 f"{name.upper()}_LIMIT ({limit:g}) while that limit is set")
        return self

    @cached_property
    def sub_backend(self) -> BackendName:
        return self.rlm_sub_backend or self.rlm_backend

    def default_model(self, backend: BackendName, *, sub: bool) -> str:
        if backend == "scripted":
            return "offline-scripted"
        # A replayed cassette is usually a recorded Gemini run: same default names.
        if backend in ("gemini", "replay"):
            return (self.gemini_sub_model_name if sub else None) or self.gemini_model_name
        return (self.openai_sub_model_name if sub else None) or self.openai_model_name

    def backend_configured(self, backend: BackendName) -> bool:
        if backend == "scripted":
            return True
        if backend == "replay":
            return bool(self.rlm_replay_cassette)
        if backend == "gemini":
            return bool(self.gemini_api_key or self.gemini_base_url
                        or self.google_genai_use_vertexai)
        return bool(self.openai_api_key or self.openai_base_url)

