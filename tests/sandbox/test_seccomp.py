"""The seccomp layer: model code that reaches for refused syscalls, through the real server."""

from __future__ import annotations

import asyncio
import json
import shutil
import textwrap
import uuid

import pytest

from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from tests.conftest import collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

if shutil.which("bwrap") is None:
    pytest.skip("bubblewrap is not installed, so there is no seccomp layer",
                allow_module_level=True)

# Raw syscall numbers (x86_64 and aarch64 differ), each tried with harmless arguments.
PROBE = textwrap.dedent("""
    import ctypes, errno, json, os, platform, socket
    libc = ctypes.CDLL(None, use_errno=True)
    NR = {"x86_64": {"ptrace": 101, "io_uring_setup": 425, "userfaultfd": 323, "bpf": 321,
                     "perf_event_open": 298, "keyctl": 250, "add_key": 248, "unshare": 272,
                     "setns": 308, "mount": 165, "kexec_load": 246, "process_vm_readv": 310},
          "aarch64": {"ptrace": 117, "io_uring_setup": 425, "userfaultfd": 282, "bpf": 280,
                      "perf_event_open": 241, "keyctl": 219, "add_key": 217, "unshare": 97,
                      "setns": 268, "mount": 40, "kexec_load": 104,
                      "process_vm_readv": 270}}[platform.machine()]
    ARGS = {"ptrace": (16, 1, 0, 0),  # PTRACE_ATTACH to the sandbox's PID 1
            "unshare": (0x10000000,), "io_uring_setup": (1, 0)}
    seen = {}
    for name, nr in NR.items():
        ctypes.set_errno(0)
        r = libc.syscall(nr, *ARGS.get(name, (0, 0, 0, 0, 0, 0)))
        seen[name] = errno.errorcode.get(ctypes.get_errno(), "ok") if r == -1 else "ok"
    for fam in ("AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"):
        try:
            socket.socket(getattr(socket, fam), socket.SOCK_RAW if fam == "AF_PACKET"
                          else socket.SOCK_DGRAM).close()
            seen[fam] = "ok"
        except OSError as e:
            seen[fam] = errno.errorcode.get(e.errno, str(e.errno))
    a, b = socket.socketpair(socket.AF_UNIX)
    seen["AF_UNIX"] = "ok"
    seen["fork"] = "ok" if os.waitpid(os.fork() or os._exit(0), 0) else "?"
    import threading, subprocess
    t = threading.Thread(target=lambda: None); t.start(); t.join()
    seen["thread"] = "ok"
    seen["subprocess"] = "ok" if subprocess.run(["true"]).returncode == 0 else "fail"
    print(json.dumps(seen))
""")
REFUSED = {"ptrace", "io_uring_setup", "userfaultfd", "bpf", "perf_event_open", "keyctl",
           "add_key", "unshare", "setns", "mount", "kexec_load", "process_vm_readv",
           "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}


async def test_refused_syscalls_fail_and_ordinary_ones_work(
        server: object, stub: rlm_pb2_grpc.RLMServiceStub, fake_gemini: FakeGemini) -> None:
    marker = f"SECCOMP-{uuid.uuid4().hex}"
    fake_gemini.script(marker, [repl(PROBE), repl("FINAL('done')")])
    events = await asyncio.wait_for(collect(stub, f"{marker} go", "ctx"), 45)
    assert "seccomp" in events[0].run_started.sandbox_layers
    out = of_kind(events, "code_block")[0]
    assert not out.error, out
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    allowed = {k: v for k, v in seen.items() if k in REFUSED and v == "ok"}
    assert not allowed, f"these succeeded inside the sandbox: {allowed}"
    assert {k: seen[k] for k in ("AF_UNIX", "fork", "thread", "subprocess")} == dict.fromkeys(
        ("AF_UNIX", "fork", "thread", "subprocess"), "ok")
    # The REPL is still the same one, so a refusal cost it nothing.
    assert final_of(events).answer == "done"
    assert not of_kind(events, "code_block")[0].repl_restarted
