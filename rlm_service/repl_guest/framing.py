"""Framing of the control channel between the service and a sandboxed REPL.

A frame is a 4-byte big-endian length followed by that many bytes of JSON. The
channel is a dedicated socket, never fds 0/1/2, so whatever user code prints
cannot corrupt it.

The body is UTF-8 with ``surrogatepass``: model code can hold strings with lone
surrogates (``'\\ud800'``), which strict UTF-8 refuses. The guest must never fail
to send its reply over them, so it passes them through; the host turns them into
U+FFFD in one place, while it checks the frame (``protocol.clean_text``).
"""

from __future__ import annotations

import json
import struct

TYPE_CHECKING = False  # typing is not imported: the guest pays for every import
if TYPE_CHECKING:
    from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


class FrameError(ValueError):
    """A frame that is too large, not JSON, or not an object."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8", "surrogatepass")
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body):,} bytes exceeds {MAX_FRAME:,}")
    return HEADER.pack(len(body)) + body


def decode_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length:,} bytes exceeds {MAX_FRAME:,}")
    return int(length)


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise FrameError(f"frame is not UTF-8 ({exc.reason})") from None
    try:
        message = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: a nesting bomb
        raise FrameError(f"frame is not JSON ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise FrameError("frame is not a JSON object")
    return message


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
