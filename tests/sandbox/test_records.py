"""The guest's ``record`` behaves as the dataclass its type checker sees."""

from __future__ import annotations

import pytest

from rlm_service.repl_guest import protocol
from rlm_service.repl_guest.records import as_dict


def test_defaults_order_and_fresh_lists() -> None:
    a = protocol.ExecReply("out", "err", 3, 3, False, False, 0.5)
    b = protocol.ExecReply(stdout="out", stderr="err", stdout_total=3, stderr_total=3,
                           error=False, timed_out=False, duration=0.5)
    assert a == b and a.vars == [] and a.vars is not b.vars and a.ok is True
    assert a != protocol.ExecReply("out", "err", 3, 3, True, False, 0.5)
    assert "stdout='out'" in repr(a)
    assert as_dict(protocol.Ready(pid=7)) == {"pid": 7, "op": "ready"}


def test_frozen_and_strict_arguments() -> None:
    ready = protocol.Ready(pid=1)
    with pytest.raises(AttributeError):
        ready.pid = 2  # type: ignore[misc]
    assert hash(ready) == hash(protocol.Ready(pid=1))
    with pytest.raises(TypeError, match="missing argument 'pid'"):
        protocol.Ready()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected"):
        protocol.Ready(pid=1, colour="red")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected or repeated"):
        protocol.Ready(1, pid=1)  # type: ignore[misc]


def test_the_guest_imports_no_dataclasses_or_typing() -> None:
    import subprocess
    import sys

    code = ("import sys; import rlm_service.repl_guest.main; "
            "print(sorted(m for m in ('dataclasses', 'typing', 'argparse', 'grpc', "
            "'inspect') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": ":".join(sys.path)})
    assert out.stdout.strip() == "[]", out
