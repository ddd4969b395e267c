"""Events as JSON lines: the protobuf JSON mapping with the proto field names
(``run_started``), which is also what grpcurl prints, so the three agree."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import json_format

from rlm_service._gen.rlm.v1 import rlm_pb2


def to_json(event: rlm_pb2.CompletionEvent) -> str:
    return json.dumps(json_format.MessageToDict(event, preserving_proto_field_name=True),
                      ensure_ascii=False)


def status_event(code: str, message: str) -> rlm_pb2.CompletionEvent:
    """An error event for a call that ended with a status but no error event (bad
    request, no server), so a saved run replays to the same outcome."""
    return rlm_pb2.CompletionEvent(error=rlm_pb2.RunError(code=code, message=message))


class EventFileError(ValueError):
    pass


def read_events(path: Path) -> Iterator[rlm_pb2.CompletionEvent]:
    """The events of a file written by ``rlm run --save`` (or ``--json``)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EventFileError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json_format.Parse(line, rlm_pb2.CompletionEvent(), ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise EventFileError(f"{path}:{number}: not a CompletionEvent: {exc}") from exc
