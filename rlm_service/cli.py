"""Command-line entry points: ``rlm-server`` runs the service, ``rlm`` calls it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
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
            "RLM_BACKEND=openai set OPENAI_API_KEY or OPENAI_BASE_URL."
        )
    try:
        asyncio.run(serve(settings))
    except SandboxUnavailable as exc:
        sys.exit(f"rlm-server: {exc}")
    except KeyboardInterrupt:
        pass


def _load_context(path: str | None) -> Any:
    if path is None:
        return None
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        return json.loads(text)
    return text


def client_main(argv: list[str] | None = None) -> None:
    from rlm_service.client import RLMClient

    parser = argparse.ArgumentParser(prog="rlm", description="Run an RLM completion.")
    parser.add_argument("prompt")
    parser.add_argument("-c", "--context", help="context file (.json = list/object; - = stdin)")
    parser.add_argument("-t", "--target", default="localhost:8080")
    parser.add_argument("--max-iterations", type=int, default=0)
    parser.add_argument("--max-depth", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=0.0)
    parser.add_argument("--stream-text", action="store_true", help="stream root-model text")
    parser.add_argument("--json", action="store_true", help="print events as JSON lines")
    args = parser.parse_args(argv)
    with RLMClient(args.target) as client:
        try:
            for event in client.stream(
                args.prompt, _load_context(args.context), max_iterations=args.max_iterations,
                max_depth=args.max_depth, timeout_seconds=args.timeout,
                stream_root_text=args.stream_text,
            ):
                _print_event(event, args.json)
        except grpc.RpcError as exc:
            sys.exit(f"rlm: {exc.code().name}: {exc.details()}")


def _print_event(event: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(json_format.MessageToDict(event)), flush=True)
        return
    kind = event.WhichOneof("event")
    body = getattr(event, kind)
    indent = "  " * getattr(body, "depth", 0)
    if kind == "root_turn":
        print(f"{indent}--- turn {body.iteration} ---\n{body.text}", flush=True)
    elif kind == "root_text_delta":
        print(body.text, end="", flush=True)
    elif kind == "code_block":
        print(f"{indent}[block {body.iteration}.{body.block_index}] {body.duration_seconds:.2f}s"
              f"{' ERROR' if body.error else ''}\n{body.stdout}{body.stderr}", flush=True)
    elif kind == "final_answer":
        print(f"\n=== answer ({body.iterations} iterations, {body.duration_seconds:.1f}s) ===\n"
              f"{body.answer}", flush=True)
    elif kind == "error":
        print(f"error: {body.code}: {body.message}", file=sys.stderr, flush=True)
    else:
        print(f"{indent}[{kind}] {json_format.MessageToJson(body, indent=None)}", flush=True)
