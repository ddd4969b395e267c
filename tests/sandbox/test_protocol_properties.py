"""Property tests: guest->host control frames against the host's parser.

Model code can write any bytes on the control channel. Whatever it writes, the
host's reader either refuses the frame (BadFrame, so the REPL is replaced) or
returns a typed message whose text protobuf accepts; it never raises anything
else. And whatever the model's data, the guest's own encoding of its replies
never fails and the host takes them back unchanged but for lone surrogates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.repl.control import BadFrame, Control
from rlm_service.repl_guest import protocol
from rlm_service.repl_guest.framing import FrameError, decode_body
from rlm_service.repl_guest.records import as_dict as asdict

EXPECTED = [protocol.Ready, protocol.Ack, protocol.ExecReply, protocol.VarReply]
FIELDS = ["ok", "op", "pid", "error", "value", "stdout", "stderr", "stdout_total",
          "stderr_total", "timed_out", "duration", "final", "partial", "vars", "push",
          "content", "extra"]

# Any text Python can hold, lone surrogates included.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | any_text)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(any_text, inner, max_size=3), max_leaves=6)
replies = st.builds(
    protocol.ExecReply,
    stdout=any_text, stderr=any_text,
    stdout_total=st.integers(0, protocol.MAX_COUNT), stderr_total=st.integers(0, 10**9),
    error=st.booleans(), timed_out=st.booleans(),
    duration=st.floats(0, protocol.MAX_DURATION),
    final=st.none() | any_text, partial=st.none(),
    vars=st.lists(any_text.filter(bool).map(protocol.clip_name), max_size=5),
)
honest = st.one_of(
    replies,
    st.builds(protocol.Ready, pid=st.integers(1, 2**22)),
    st.builds(protocol.Ack, ok=st.booleans(), error=any_text),
    st.builds(protocol.VarReply, ok=st.booleans(), value=any_text, error=any_text),
    st.builds(protocol.PartialPush, content=any_text),
).map(asdict)


@st.composite
def frames(draw: st.DrawFn) -> dict[str, Any]:
    """An honest frame with a few fields replaced, removed or added, as forged ones are."""
    frame = draw(honest)
    for _ in range(draw(st.integers(0, 3))):
        known = st.sampled_from(sorted(frame)) if frame else st.sampled_from(FIELDS)
        key = draw(known | st.sampled_from(FIELDS) | any_text)
        if draw(st.booleans()):
            frame[key] = draw(values)
        else:
            frame.pop(key, None)
    return frame


def surrogate_free(text: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def assert_protobuf_safe(message: protocol.GuestMessage) -> None:
    if isinstance(message, protocol.ExecReply):
        rlm_pb2.CodeBlock(stdout=message.stdout, stderr=message.stderr,
                          duration_seconds=message.duration).SerializeToString()
        rlm_pb2.FinalAnswer(answer=message.final or message.partial or "").SerializeToString()
        assert all(surrogate_free(v) and len(v) <= protocol.MAX_VAR_NAME_CHARS
                   for v in message.vars)
        assert math.isfinite(message.duration) and message.stdout_total >= 0
    for value in vars(message).values():
        if isinstance(value, str):
            assert surrogate_free(value)
            value.encode("utf-8")


def raw(frame: dict[str, Any]) -> bytes:
    """How model code would write a frame: JSON, allowing what json.dumps allows."""
    return json.dumps(frame, ensure_ascii=False).encode("utf-8", "surrogatepass")


@settings(max_examples=150, deadline=None, database=None)
@given(frame=frames(), expected=st.sampled_from(EXPECTED))
def test_any_json_frame_is_refused_or_safe(frame: dict[str, Any], expected: Any) -> None:
    try:
        message = protocol.parse_guest(decode_body(raw(frame)), expected)
    except (protocol.ProtocolError, FrameError):
        return
    assert isinstance(message, expected | protocol.PartialPush)
    assert_protobuf_safe(message)


@settings(max_examples=150, deadline=None, database=None)
@given(body=st.binary(max_size=200) | st.builds(raw, frames()))
def test_any_bytes_decode_to_an_object_or_a_frame_error(body: bytes) -> None:
    with contextlib.suppress(FrameError):
        assert isinstance(decode_body(body), dict)


@settings(max_examples=100, deadline=None, database=None)
@given(reply=replies)
def test_what_the_guest_sends_comes_back_cleaned(reply: protocol.ExecReply) -> None:
    message = protocol.parse_guest(decode_body(protocol.to_frame(reply)[4:]),
                                   protocol.ExecReply)
    assert isinstance(message, protocol.ExecReply)
    assert message.stdout == protocol.clean_text(reply.stdout)
    assert message.final == (None if reply.final is None else protocol.clean_text(reply.final))
    assert message.vars == [protocol.clean_text(v) for v in reply.vars]
    assert_protobuf_safe(message)


async def _read_one(data: bytes) -> protocol.ExecReply | protocol.PartialPush | None:
    ours, theirs = socket.socketpair()
    try:
        reader, writer = await asyncio.open_unix_connection(sock=ours,
                                                            limit=protocol.MAX_FRAME + 16)
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        try:
            return await Control(reader, writer).recv(protocol.ExecReply)
        except (BadFrame, asyncio.IncompleteReadError):
            return None
        finally:
            writer.close()
    finally:
        theirs.close()


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=100) | st.builds(raw, frames()),
       length=st.none() | st.integers(0, 2**32 - 1))
def test_the_host_reader_takes_any_bytes(body: bytes, length: int | None) -> None:
    header = struct.pack(">I", len(body) if length is None else length)
    message = asyncio.run(_read_one(header + body))
    if message is not None:
        assert_protobuf_safe(message)


@pytest.mark.parametrize("text", ["a\ud800b", "\udcff", "ok-\udcff-end", "\ud83d\ude00"])
def test_lone_surrogates_become_replacement_characters(text: str) -> None:
    cleaned = protocol.clean_text(text)
    assert surrogate_free(cleaned) and len(cleaned) == len(text)
