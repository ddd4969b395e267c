"""The guest's end of the control channel: frames in and out over one socket."""

from __future__ import annotations

import socket
import threading

from rlm_service.repl_guest import protocol
from rlm_service.repl_guest.framing import HEADER, decode_body, decode_length


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._rfile = sock.makefile("rb")
        # Pushes come from the main thread while it runs a block; a reply from the
        # same thread afterwards. The lock keeps a frame whole should that change.
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, message: protocol.GuestMessage) -> None:
        frame = protocol.to_frame(message)
        with self._lock:
            self._sock.sendall(frame)

    def recv(self) -> protocol.HostMessage | None:
        """The service's next request, or None once it closed the channel."""
        header = self._rfile.read(HEADER.size)
        if len(header) < HEADER.size:
            return None
        body = self._rfile.read(decode_length(header))
        return protocol.parse_host(decode_body(body))
