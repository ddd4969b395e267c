"""Record and replay model traffic: ``RLM_RECORD=DIR`` and ``RLM_BACKEND=replay``.

With ``RLM_RECORD=DIR`` every model request and reply (or final error) of a
request is appended to ``DIR/<request id>.jsonl``, a *cassette*: a header line,
then one line per call. A request is kept as its model, options and, per
message, the role, length, SHA-256 and a short preview: enough to match it
exactly and to say where a new request differs, without copying a 100 MB
context into the file.

``RLM_BACKEND=replay`` with ``RLM_REPLAY_CASSETTE=FILE`` (or a folder of
cassettes) answers each request with the reply recorded for an identical
request (same model, options and messages), in recorded order when one request
was made several times. A request the cassette has never seen fails with
``FAILED_PRECONDITION`` (kind ``replay_miss``) naming the first message that
differs: a recorded real run thus becomes an offline regression test of our
prompts, the answer parsing and the loop. Replies come back at once, so a
replay's events match the recording's except for times and ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from rlm_service.config import Settings
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
from rlm_service.telemetry.logs import request_id_var

log = logging.getLogger(__name__)

VERSION = 1
PREVIEW = 120


def request_record(model: str, messages: Sequence[Message],
                   options: GenerateOptions) -> dict[str, Any]:
    """What a cassette keeps of a request; equal records mean equal requests."""
    return {
        "model": model,
        "options": {"temperature": options.temperature,
                    "thinking_budget": options.thinking_budget,
                    "system_prompt_sha256": _sha(options.system_prompt or "")},
        "messages": [{"role": m.role, "chars": len(m.text), "sha256": _sha(m.text),
                      "preview": m.text[:PREVIEW], "tail": m.text[-PREVIEW:]}
                     for m in messages],
    }


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _key(request: dict[str, Any]) -> str:
    matched = {"model": request["model"], "options": request["options"],
               "messages": [(m["role"], m["sha256"]) for m in request["messages"]]}
    return _sha(json.dumps(matched, sort_keys=True))


def _usage(usage: TokenUsage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "output_tokens": usage.output_tokens,
            "thinking_tokens": usage.thinking_tokens, "cached_tokens": usage.cached_tokens}


class CassetteWriter:
    """Appends calls to one cassette per request id under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._started: set[str] = set()

    def path_for(self, request_id: str) -> Path:
        return self.directory / f"{request_id}.jsonl"

    def write(self, backend: str, request: dict[str, Any], outcome: dict[str, Any]) -> None:
        request_id = request_id_var.get() or "no-request"
        path = self.path_for(request_id)
        lines = []
        if request_id not in self._started:
            self._started.add(request_id)
            lines.append({"cassette": VERSION, "request_id": request_id})
        lines.append({"backend": backend, "request": request, **outcome})
        try:
            # Replies and prompt excerpts are user data: readable by the service's user only.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "a", encoding="utf-8") as f:
                for line in lines:
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
        except OSError as exc:
            # Recording is a debugging aid: a full disk must not fail the run.
            log.warning("RLM_RECORD: cannot write %s: %s", path, exc.strerror)


class RecordingBackend:
    """Wraps a backend and writes each of its calls to the cassette."""

    def __init__(self, inner: ModelBackend, writer: CassetteWriter) -> None:
        self.inner = inner
        self.name = inner.name
        self._writer = writer

    async def generate(
        self,
        model: str,
        messages: Sequence[Message],
        options: GenerateOptions,
        *,
        deadline: float | None = None,
        on_delta: DeltaHook | None = None,
        on_retry: RetryHook | None = None,
        on_attempt: AttemptHook | None = None,
    ) -> ModelReply:
        request = request_record(model, messages, options)
        try:
            reply = await self.inner.generate(model, messages, options, deadline=deadline,
                                              on_delta=on_delta, on_retry=on_retry,
                                              on_attempt=on_attempt)
        except ModelError as exc:
            self._writer.write(self.name, request, {"error": {
                "code": exc.code.name, "kind": exc.kind, "message": exc.message,
                "usage": _usage(exc.usage), "retries": exc.retries}})
            raise
        self._writer.write(self.name, request, {"reply": {
            "text": reply.text, "usage": _usage(reply.usage),
            "finish_reason": reply.finish_reason, "retries": reply.retries}})
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()


def record_all(backends: dict[str, ModelBackend], directory: str) -> dict[str, ModelBackend]:
    try:
        writer = CassetteWriter(Path(directory))
    except OSError as exc:
        raise ValueError(f"RLM_RECORD={directory}: cannot create it: {exc.strerror}") from None
    log.info("RLM_RECORD: writing model calls to %s", directory)
    return {name: RecordingBackend(backend, writer) for name, backend in backends.items()}


class CassetteError(ValueError):
    pass


def read_cassette(path: Path) -> list[dict[str, Any]]:
    """The recorded calls of one cassette file, in order."""
    calls = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CassetteError(f"cannot read cassette {path}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise CassetteError(f"{path}:{number}: not JSON") from None
        if "cassette" in entry:
            if entry["cassette"] != VERSION:
                raise CassetteError(f"{path}: cassette version {entry['cassette']} "
                                    f"(this service reads {VERSION})")
            continue
        if not isinstance(entry.get("request"), dict) or not (
                isinstance(entry.get("reply"), dict) or isinstance(entry.get("error"), dict)):
            raise CassetteError(f"{path}:{number}: needs 'request' and 'reply' or 'error'")
        calls.append(entry)
    return calls


class ReplayBackend:
    """Answers from recorded calls; see the module docstring."""

    name = "replay"

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self._queues: dict[str, deque[dict[str, Any]]] = {}
        self._requests: list[dict[str, Any]] = []
        for call in calls:
            self._queues.setdefault(_key(call["request"]), deque()).append(call)
            self._requests.append(call["request"])

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplayBackend:
        if not settings.rlm_replay_cassette:
            raise ValueError("RLM_BACKEND=replay needs RLM_REPLAY_CASSETTE (a cassette file "
                             "or a folder of them)")
        source = Path(settings.rlm_replay_cassette)
        files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
        if not files:
            raise CassetteError(f"no cassettes (*.jsonl) in {source}")
        calls = [call for path in files for call in read_cassette(path)]
        log.info("replaying %d recorded model calls from %s", len(calls), source)
        return cls(calls)

    async def generate(
        self,
        model: str,
        messages: Sequence[Message],
        options: GenerateOptions,
        *,
        deadline: float | None = None,
        on_delta: DeltaHook | None = None,
        on_retry: RetryHook | None = None,
        on_attempt: AttemptHook | None = None,
    ) -> ModelReply:
        request = request_record(model, messages, options)
        queue = self._queues.get(_key(request))
        if not queue:
            raise ModelError(self._miss(request), code=grpc.StatusCode.FAILED_PRECONDITION,
                             kind="replay_miss")
        # The last recording of a request stays, so extra identical calls repeat it.
        call = queue.popleft() if len(queue) > 1 else queue[0]
        if on_attempt is not None:
            on_attempt()
        if "error" in call:
            error = call["error"]
            raise ModelError(error["message"], code=grpc.StatusCode[error["code"]],
                             kind=error["kind"], usage=TokenUsage(**error["usage"]),
                             retries=error.get("retries", 0))
        reply = call["reply"]
        if on_delta is not None and reply["text"]:
            on_delta(reply["text"])
        return ModelReply(reply["text"], TokenUsage(**reply["usage"]),
                          reply.get("finish_reason", "STOP"), reply.get("retries", 0))

    def _miss(self, request: dict[str, Any]) -> str:
        """Where the request parts from the most similar recorded one."""
        wanted = request["messages"]
        same_model = [r for r in self._requests if r["model"] == request["model"]]
        if not same_model:
            models = sorted({r["model"] for r in self._requests})
            return f"replay: no call to model {request['model']!r} was recorded (recorded: {models})"

        def shared(recorded: dict[str, Any]) -> int:
            n = 0
            for a, b in zip(recorded["messages"], wanted, strict=False):
                if a["sha256"] != b["sha256"]:
                    break
                n += 1
            return n

        nearest = max(same_model, key=shared)
        at = shared(nearest)
        if at < len(wanted) and at < len(nearest["messages"]):
            old, new = nearest["messages"][at], wanted[at]
            part = "preview" if old["preview"] != new["preview"] else "tail"
            return (f"replay: no recorded reply for this {request['model']} request; message "
                    f"{at + 1} differs: recorded {old['chars']:,} characters "
                    f"{'starting' if part == 'preview' else 'ending'} {old.get(part, '')!r}, "
                    f"now {new['chars']:,} characters {new[part]!r}")
        if nearest["options"] != request["options"]:
            return f"replay: no recorded reply for this {request['model']} request; its options differ"
        return (f"replay: no recorded reply for this {request['model']} request "
                f"({len(wanted)} messages; the nearest recorded one has {len(nearest['messages'])})")

    async def aclose(self) -> None:
        return None
