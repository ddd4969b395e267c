"""Per-REPL caps on the LLMQuery callback: calls and request bytes in flight.

Model code can open its own channels to the callback socket from many processes;
every call it makes is counted against its run here, on the host, where it
cannot be dodged. A call over a cap is answered at once with an error the model's
code sees (``Error: ...``), before any model is called.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

MAX_CALLS_IN_FLIGHT = 32
MAX_BYTES_IN_FLIGHT = 64 * 1024 * 1024


@dataclass
class _Load:
    calls: int = 0
    bytes: int = 0


class CallCaps:
    def __init__(self, max_calls: int = MAX_CALLS_IN_FLIGHT,
                 max_bytes: int = MAX_BYTES_IN_FLIGHT) -> None:
        self.max_calls = max_calls
        self.max_bytes = max_bytes
        self._loads: dict[int, _Load] = {}

    @contextlib.contextmanager
    def admit(self, owner: object, size: int) -> Iterator[str | None]:
        """Yields None when the call may go on, else why it is refused."""
        key = id(owner)
        load = self._loads.setdefault(key, _Load())
        refusal = None
        if load.calls >= self.max_calls:
            refusal = (f"Error: {load.calls} sub-calls of this REPL are already in flight; "
                       f"the limit is {self.max_calls}. Wait for some to finish.")
        elif load.bytes and load.bytes + size > self.max_bytes:
            refusal = (f"Error: this REPL's sub-calls in flight already carry "
                       f"{load.bytes:,} bytes; with this one ({size:,}) they would pass the "
                       f"limit of {self.max_bytes:,}. Send less at once.")
        if refusal is not None:
            if not load.calls:
                del self._loads[key]
            yield refusal
            return
        load.calls += 1
        load.bytes += size
        try:
            yield None
        finally:
            load.calls -= 1
            load.bytes -= size
            if not load.calls:
                self._loads.pop(key, None)
