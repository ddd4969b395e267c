"""The typed messages of the control channel, shared by the service and the guest.

Host -> guest: ``InitRequest``, ``ExecRequest``, ``GetVarRequest``.
Guest -> host: ``Ready`` (once, at start), ``Ack`` (to init), ``ExecReply``,
``VarReply``, and unsolicited ``PartialPush`` frames while a block runs.

The host trusts nothing the guest sends: model code runs in the guest process and
can write any bytes on the channel. ``parse_guest`` checks every field of a frame
(type, range, size) and is the one place where guest text is made safe for
protobuf (lone surrogates become U+FFFD). A frame that fails it is a
``ProtocolError``; the host then replaces that REPL.
"""

from __future__ import annotations

import math
import re

from rlm_service.repl_guest.framing import MAX_FRAME, FrameError, decode_body, encode
from rlm_service.repl_guest.records import as_dict, list_field, record

TYPE_CHECKING = False  # typing itself is not imported: the guest pays for every import
if TYPE_CHECKING:
    from typing import Any, Literal

__all__ = [
    "MAX_FRAME", "Ack", "ExecReply", "ExecRequest", "FrameError", "GetVarRequest",
    "InitRequest", "PartialPush", "ProtocolError", "Ready", "VarReply", "clean_text",
    "decode_body", "encode", "parse_guest", "parse_host",
]

# gRPC metadata key carrying a REPL's secret on its LLMQuery calls.
SECRET_METADATA_KEY = "x-rlm-run-secret"
# The longest answer (FINAL, FINAL_VAR, answer["content"]) a REPL may give. A longer
# one is refused with an error the model's code sees, never cut.
MAX_ANSWER_CHARS = 8 * 1024 * 1024
# The guest sends answer["content"] mid-block at most once per PUSH_INTERVAL
# seconds, and only up to PUSH_MAX_CHARS (a longer one waits for the block's reply).
PUSH_INTERVAL = 0.2
PUSH_MAX_CHARS = 1_000_000
# Variable names as the host shows them to the model: clipped like output.
MAX_VAR_NAME_CHARS = 80
MAX_VARS = 200
# Output the guest itself kept (its capture is capped by the service's setting,
# which is far below this); the host clips again to the setting.
MAX_OUTPUT_FIELD = 8 * 1024 * 1024
MAX_ERROR_CHARS = 10_000
MAX_COUNT = 2**62
MAX_DURATION = 10.0**6

_SURROGATE = re.compile("[\ud800-\udfff]")


class ProtocolError(ValueError):
    """A frame from the guest that breaks the protocol (forged by model code)."""


def clean_text(text: str) -> str:
    """``text`` with lone surrogates replaced, so protobuf and UTF-8 accept it."""
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


def clip_name(name: str) -> str:
    return name if len(name) <= MAX_VAR_NAME_CHARS else name[:MAX_VAR_NAME_CHARS - 1] + "…"


# --- host -> guest ---------------------------------------------------------------
@record(frozen=True)
class InitRequest:
    context_path: str
    context_kind: Literal["str", "json"]
    secret: str
    socket: str
    # The operator tools this run gets: functions of the tools module, HTTP tools.
    sandbox_tools: list[str] = list_field()
    http_tools: list[str] = list_field()
    op: Literal["init"] = "init"


@record(frozen=True)
class ExecRequest:
    code: str
    timeout: float
    op: Literal["exec"] = "exec"


@record(frozen=True)
class GetVarRequest:
    name: str
    op: Literal["get_var"] = "get_var"


HostMessage = InitRequest | ExecRequest | GetVarRequest


# --- guest -> host ---------------------------------------------------------------
@record(frozen=True)
class Ready:
    pid: int
    op: Literal["ready"] = "ready"


@record(frozen=True)
class Ack:
    ok: bool
    error: str = ""


@record(frozen=True)
class ExecReply:
    stdout: str
    stderr: str
    stdout_total: int
    stderr_total: int
    error: bool
    timed_out: bool
    duration: float
    # Set only when the block gave the answer; ``partial`` only when it did not.
    final: str | None = None
    partial: str | None = None
    vars: list[str] = list_field()
    ok: bool = True


@record(frozen=True)
class VarReply:
    ok: bool
    value: str = ""
    error: str = ""


@record(frozen=True)
class PartialPush:
    content: str
    push: Literal["partial"] = "partial"


GuestMessage = Ready | Ack | ExecReply | VarReply | PartialPush


def to_frame(message: HostMessage | GuestMessage) -> bytes:
    return encode(as_dict(message))


# --- checking --------------------------------------------------------------------
class _Fields:
    """Reads the fields of one frame, refusing anything unexpected."""

    def __init__(self, frame: dict[str, Any], kind: str) -> None:
        self.frame = frame
        self.kind = kind
        self.seen: set[str] = set()

    def fail(self, why: str) -> ProtocolError:
        return ProtocolError(f"{self.kind} frame: {why}")

    def get(self, key: str, default: Any = ..., *, optional: bool = False) -> Any:
        self.seen.add(key)
        if key in self.frame:
            return self.frame[key]
        if default is ... and not optional:
            raise self.fail(f"missing {key!r}")
        return None if default is ... else default

    def text(self, key: str, limit: int, default: Any = ...) -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            raise self.fail(f"{key!r} is {type(value).__name__}, not a string")
        if len(value) > limit:
            raise self.fail(f"{key!r} has {len(value):,} characters, over {limit:,}")
        return clean_text(value)

    def maybe_text(self, key: str, limit: int) -> str | None:
        if self.get(key, None) is None:
            return None
        return self.text(key, limit)

    def flag(self, key: str, default: Any = ...) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{key!r} is {type(value).__name__}, not a boolean")
        return value

    def count(self, key: str, high: int = MAX_COUNT) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            raise self.fail(f"{key!r} is not a count in 0..{high}")
        return value

    def seconds(self, key: str) -> float:
        value = self.get(key)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or not 0 <= value <= MAX_DURATION):
            raise self.fail(f"{key!r} is not a duration")
        return float(value)

    def names(self, key: str) -> list[str]:
        value = self.get(key)
        if not isinstance(value, list) or len(value) > MAX_VARS:
            raise self.fail(f"{key!r} is not a list of at most {MAX_VARS} names")
        out = []
        for name in value:
            if not isinstance(name, str) or not name or len(name) > MAX_VAR_NAME_CHARS:
                raise self.fail(f"{key!r} holds a name that is not 1..{MAX_VAR_NAME_CHARS} "
                                "characters of text")
            out.append(clean_text(name))
        return out

    def done(self) -> None:
        extra = set(self.frame) - self.seen
        if extra:
            raise self.fail(f"unexpected fields {sorted(extra)[:5]}")


Expected = type[Ready] | type[Ack] | type[ExecReply] | type[VarReply]


def parse_guest(frame: dict[str, Any], expected: Expected) -> GuestMessage:
    """The guest's frame as ``expected`` (or a ``PartialPush``), checked field by field."""
    if "push" in frame:
        f = _Fields(frame, "push")
        if f.get("push") != "partial":
            raise f.fail("unknown push kind")
        push = PartialPush(content=f.text("content", PUSH_MAX_CHARS))
        f.done()
        return push
    f = _Fields(frame, expected.__name__)
    message: GuestMessage
    if expected is Ready:
        if f.get("op") != "ready":
            raise f.fail("not a ready frame")
        message = Ready(pid=f.count("pid", 2**31))
    elif expected is Ack:
        message = Ack(ok=f.flag("ok"), error=f.text("error", MAX_ERROR_CHARS, ""))
    elif expected is VarReply:
        message = VarReply(ok=f.flag("ok"), value=f.text("value", MAX_ANSWER_CHARS, ""),
                           error=f.text("error", MAX_ERROR_CHARS, ""))
    else:
        if f.flag("ok") is not True:
            raise f.fail("an exec reply must be ok")
        final = f.maybe_text("final", MAX_ANSWER_CHARS)
        partial = f.maybe_text("partial", MAX_ANSWER_CHARS)
        if final is not None and partial is not None:
            raise f.fail("both 'final' and 'partial'")
        message = ExecReply(
            stdout=f.text("stdout", MAX_OUTPUT_FIELD), stderr=f.text("stderr", MAX_OUTPUT_FIELD),
            stdout_total=f.count("stdout_total"), stderr_total=f.count("stderr_total"),
            error=f.flag("error"), timed_out=f.flag("timed_out"),
            duration=f.seconds("duration"), final=final, partial=partial,
            vars=f.names("vars"),
        )
    f.done()
    return message


def parse_host(frame: dict[str, Any]) -> HostMessage:
    """The service's request, as the guest reads it (it trusts the service)."""
    op = frame.get("op")
    if op == "init":
        kind: Literal["str", "json"] = "str" if frame.get("context_kind") == "str" else "json"
        return InitRequest(context_path=str(frame["context_path"]), context_kind=kind,
                           secret=str(frame["secret"]), socket=str(frame["socket"]),
                           sandbox_tools=[str(n) for n in frame.get("sandbox_tools", ())],
                           http_tools=[str(n) for n in frame.get("http_tools", ())])
    if op == "exec":
        return ExecRequest(code=str(frame["code"]), timeout=float(frame.get("timeout", 0)))
    if op == "get_var":
        return GetVarRequest(name=str(frame["name"]))
    raise ProtocolError(f"unknown op {op!r}")
