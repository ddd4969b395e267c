"""The host's end of a REPL's control channel: typed frames, each one checked.

Model code runs inside the guest and may write anything on the channel, so every
frame is read through ``protocol.parse_guest``; anything else is a ``ReplError``
and the REPL is replaced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from rlm_service.repl_guest import protocol
from rlm_service.repl_guest.framing import HEADER, decode_body, decode_length

# What the host takes in pushes while it waits for a reply: a push costs one
# unit plus one per PUSH_MAX_CHARS of content, and the allowance is PUSH_BURST
# units plus one per half PUSH_INTERVAL. An honest guest stays well inside;
# forged frames cannot keep the service decoding (one frame of up to MAX_FRAME
# at most, then the REPL is dropped).
PUSH_BURST = 4.0
MIN_PUSH_INTERVAL = protocol.PUSH_INTERVAL / 2

R = TypeVar("R", protocol.Ready, protocol.Ack, protocol.ExecReply, protocol.VarReply)


class ReplError(Exception):
    """The REPL process died or broke the protocol; its state is gone."""


class BadFrame(ReplError):
    """The REPL sent a frame the protocol does not allow."""


class Control:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self.writer = writer

    async def send(self, message: protocol.HostMessage) -> None:
        self.writer.write(protocol.to_frame(message))
        await self.writer.drain()

    async def recv(self, expected: type[R]) -> R | protocol.PartialPush:
        """The next frame; raises BadFrame for a frame that breaks the protocol, and
        asyncio.IncompleteReadError / ConnectionError when the channel is gone."""
        header = await self._reader.readexactly(HEADER.size)
        try:
            length = decode_length(header)
        except ValueError as exc:
            raise BadFrame(f"the REPL broke the control protocol ({exc})") from None
        body = await self._reader.readexactly(length)
        try:
            message = protocol.parse_guest(decode_body(body), expected)
        except ValueError as exc:  # FrameError, ProtocolError
            raise BadFrame(f"the REPL broke the control protocol ({exc})") from None
        if not isinstance(message, (expected, protocol.PartialPush)):
            raise BadFrame("the REPL broke the control protocol (unexpected frame)")
        return message

    async def reply(self, expected: type[R], on_partial: Callable[[str], None] | None) -> R:
        """The reply to the request just sent, taking in the guest's pushes on the way."""
        started = time.monotonic()
        spent = 0.0
        while True:
            message = await self.recv(expected)
            if not isinstance(message, protocol.PartialPush):
                return message
            spent += 1 + len(message.content) / protocol.PUSH_MAX_CHARS
            if spent > PUSH_BURST + (time.monotonic() - started) / MIN_PUSH_INTERVAL:
                raise BadFrame("the REPL sent more answer updates than its guest ever "
                               "does (forged control frames)")
            if on_partial is not None:
                on_partial(message.content)
