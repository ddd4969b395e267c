"""Record a run as a cassette once, then check that a replay reproduces it.

    python -m evals.cassettes record DIR --prompt P --context-file F [--backend gemini]
    python -m evals.cassettes check DIR
    python -m evals.cassettes rerecord DIR [--backend scripted]

``record`` runs the request on a fresh service with ``RLM_RECORD`` and keeps,
in DIR: ``request.json`` (prompt, context, request fields), ``cassette.jsonl``
(every model call) and ``events.jsonl`` (the events, as ``rlm run --save``
writes them). ``check`` replays the cassette with ``RLM_BACKEND=replay`` and
compares the events, ignoring times and ids; it exits 1 at the first difference.
With a real model recorded once, ``check`` is an offline regression test.
``rerecord`` records DIR's request again, after an intended change to the prompts
or the loop (the shipped cassettes in tests/cassettes come from the scripted model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from evals.service import LocalService, ServiceError
from rlm_client import RLMClient
from rlm_client.context import ContextError, load_context
from rlm_client.events import read_events, to_json
from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.config import Settings

# Differ from run to run by nature: clocks, ids and tokens, the sandbox layers of the machine, and
# the running total a sub-call sees when it ends (it depends on which sibling ended first).
VOLATILE = frozenset({"seq", "time", "request_id", "call_id", "parent_id", "latency_seconds",
                      "duration_seconds", "elapsed_seconds", "sandbox_layers", "run_usage",
                      "run_token"})
_SUB_CALL = ("sub_call_started", "sub_call_finished")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def normalise(events: Iterable[rlm_pb2.CompletionEvent], *,
              sort_sub_calls: bool = True) -> list[dict[str, Any]]:
    """The events as dicts without times and ids; heartbeats dropped.

    Concurrent sub-calls of one block start and end in whatever order the model
    answers them, so each unbroken run of sub-call events is put in a fixed order.
    A replay answers at once, so replays of one cassette agree even unsorted.
    """
    out: list[dict[str, Any]] = []
    group: list[dict[str, Any]] = []
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "heartbeat":
            continue
        entry = _strip(json_format.MessageToDict(event, preserving_proto_field_name=True))
        if kind in _SUB_CALL and sort_sub_calls:
            group.append(entry)
            continue
        out += sorted(group, key=lambda e: json.dumps(e, sort_keys=True))
        group = []
        out.append(entry)
    return out + sorted(group, key=lambda e: json.dumps(e, sort_keys=True))


def first_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"event {i + 1} differs:\n  recorded {json.dumps(x)[:400]}\n  replayed {json.dumps(y)[:400]}"
    if len(a) != len(b):
        return f"recorded {len(a)} events, replayed {len(b)}"
    return None


def run_request(address: str, request: dict[str, Any]) -> list[rlm_pb2.CompletionEvent]:
    with RLMClient(address) as client:
        # The call's deadline outlasts the run's own limit, so the limit in the
        # events is the requested one, not what was left of a deadline.
        limit = float(request["fields"].get("timeout_seconds") or 120)
        return list(client.stream(request["prompt"], request["context"], timeout=limit + 30,
                                  **request["fields"]))


def record(directory: Path, request: dict[str, Any], backend: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rlm-record-") as tmp:
        tape = Path(tmp) / "tape"
        with LocalService({"RLM_BACKEND": backend, "RLM_SUB_BACKEND": backend,
                           "RLM_RECORD": str(tape)}, Path(tmp) / "server.log") as service:
            events = run_request(service.address, request)
        recorded = sorted(tape.glob("*.jsonl"))
        if len(recorded) != 1:
            raise ServiceError(f"expected one cassette, the service wrote {len(recorded)}")
        shutil.copyfile(recorded[0], directory / "cassette.jsonl")
    (directory / "request.json").write_text(json.dumps(request, indent=1) + "\n")
    (directory / "events.jsonl").write_text("".join(to_json(e) + "\n" for e in events))


def check(directory: Path) -> str | None:
    """None when a replay reproduces the recorded events, else the first difference."""
    request = json.loads((directory / "request.json").read_text())
    with tempfile.TemporaryDirectory(prefix="rlm-replay-") as tmp, LocalService(
            {"RLM_BACKEND": "replay", "RLM_SUB_BACKEND": "replay",
             "RLM_REPLAY_CASSETTE": str(directory / "cassette.jsonl")},
            Path(tmp) / "server.log") as service:
        replayed = run_request(service.address, request)
    return first_difference(normalise(read_events(directory / "events.jsonl")),
                            normalise(replayed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.cassettes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("directory", type=Path)
    rec.add_argument("--prompt", required=True)
    rec.add_argument("--context-file", required=True)
    rec.add_argument("--backend", default="scripted", choices=("scripted", "gemini", "openai"))
    rec.add_argument("--root-model", default="")
    rec.add_argument("--sub-model", default="")
    rec.add_argument("--max-iterations", type=int, default=8)
    chk = sub.add_parser("check")
    chk.add_argument("directory", type=Path)
    again = sub.add_parser("rerecord")
    again.add_argument("directory", type=Path)
    again.add_argument("--backend", default="scripted", choices=("scripted", "gemini", "openai"))
    args = parser.parse_args(argv)
    try:
        if args.command == "rerecord":
            request = json.loads((args.directory / "request.json").read_text())
            record(args.directory, request, args.backend)
            print(f"recorded {args.directory} again")
            return 0
        if args.command == "record":
            # Named in the request: a replay must ask for the models that were recorded.
            settings = Settings(rlm_backend=args.backend)
            request = {"prompt": args.prompt, "context": load_context(args.context_file),
                       "fields": {
                           "root_model": args.root_model
                           or settings.default_model(settings.rlm_backend, sub=False),
                           "sub_model": args.sub_model
                           or settings.default_model(settings.rlm_backend, sub=True),
                           "max_iterations": args.max_iterations, "timeout_seconds": 120}}
            record(args.directory, request, args.backend)
            print(f"recorded {args.directory}")
            return 0
        difference = check(args.directory)
    except (ServiceError, ContextError, OSError, json.JSONDecodeError) as exc:
        print(f"cassettes: {exc}", file=sys.stderr)
        return 2
    if difference:
        print(f"cassettes: the replay differs from the recording: {difference}", file=sys.stderr)
        return 1
    print(f"{args.directory}: the replay reproduces the recorded events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
