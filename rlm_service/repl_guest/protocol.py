"""Framing for the control channel between the service and a sandboxed REPL.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON. The channel is a dedicated socket, never fds 0/1/2, so whatever user code
prints cannot corrupt it.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024

# gRPC metadata key carrying a REPL's secret on its LLMQuery calls.
SECRET_METADATA_KEY = "x-rlm-run-secret"

# Unsolicited guest -> host frames: {"push": PUSH_PARTIAL, "content": ...}
# carries answer["content"] while a block runs. The guest sends at most one
# per PUSH_INTERVAL seconds, of at most PUSH_MAX_CHARS characters.
PUSH_PARTIAL = "partial"
PUSH_INTERVAL = 0.2
PUSH_MAX_CHARS = 1_000_000


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def decode_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return int(length)


def decode_body(body: bytes) -> dict[str, Any]:
    message = json.loads(body.decode())
    if not isinstance(message, dict):
        raise ValueError("frame is not a JSON object")
    return message
