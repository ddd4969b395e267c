"""Red-team cases: hostile model-written code run through the real server.

Every case runs the attack as a ```repl block of a real run, checks concretely
that it failed, and then proves the service is still healthy (gRPC health
check plus a fresh run that makes a sub-call). One server serves the module.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import os
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

import rlm_service
from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from rlm_service.server import Server
from tests.conftest import (
    API_KEY,
    busy_repl_pids,
    collect,
    final_of,
    make_settings,
    of_kind,
    repl,
)
from tests.fakes._common import Req
from tests.fakes.gemini import FakeGemini

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

BLOCK_TIMEOUT = 2.0
TMP_MB = 16
MAX_OUTPUT = 5_000
# A uid range of this module's own, so other test sessions' sandboxes never count.
UID_BASE = 500_000 + (os.getpid() % 400) * 1_000
UID_COUNT = 1_000
PROJECT_DIR = Path(rlm_service.__file__).resolve().parent.parent
AFTER = repl("FINAL('after:' + str(len(context)))")


# --- fixtures ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as f:
        yield f


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def srv(fake: FakeGemini) -> AsyncIterator[Server]:
    # The key also sits in the service's environment, so an environ leak would show it.
    saved = {k: os.environ.get(k) for k in ("GEMINI_API_KEY", "RLM_REDTEAM_CANARY")}
    os.environ["GEMINI_API_KEY"] = os.environ["RLM_REDTEAM_CANARY"] = API_KEY
    server = Server(make_settings(
        fake, sandbox_block_timeout_seconds=BLOCK_TIMEOUT, sandbox_tmp_mb=TMP_MB,
        sandbox_pool_size=2, max_output_chars=MAX_OUTPUT,
        sandbox_uid_base=UID_BASE, sandbox_uid_count=UID_COUNT,
    ))
    await server.start()
    try:
        yield server
        pooled = sandbox_uid_pids()  # the pool's idle REPLs, at least
    finally:
        await server.stop(grace=0)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # Checked here, after every case: nothing of the sandbox outlives the server.
    deadline = time.monotonic() + 3
    while sandbox_uid_pids() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert pooled and sandbox_uid_pids() == {}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stub(srv: Server) -> AsyncIterator[rlm_pb2_grpc.RLMServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        yield rlm_pb2_grpc.RLMServiceStub(channel)


# --- helpers ----------------------------------------------------------------------
def code(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


async def attack(stub: rlm_pb2_grpc.RLMServiceStub, fake: FakeGemini, attack_code: str,
                 *later: Any, context: Any = "ctx", **fields: Any
                 ) -> list[rlm_pb2.CompletionEvent]:
    """Runs ``attack_code`` as the first root turn; later turns default to a FINAL."""
    marker = f"RT-{uuid.uuid4().hex}"
    fake.script(marker, [repl(code(attack_code)), *(later or (AFTER,))])
    return await asyncio.wait_for(collect(stub, f"{marker} go", context, **fields), 45)


def block(events: list[rlm_pb2.CompletionEvent], n: int = 0) -> Any:
    return of_kind(events, "code_block")[n]


def all_text(events: list[rlm_pb2.CompletionEvent]) -> str:
    return "\n".join(str(e) for e in events)


async def assert_healthy(srv: Server, stub: rlm_pb2_grpc.RLMServiceStub,
                         fake: FakeGemini) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    marker = f"HEALTHY-{uuid.uuid4().hex}"
    fake.script(marker, [repl("FINAL(context[::-1] + '|' + llm_query('ping'))")])
    events = await asyncio.wait_for(collect(stub, f"{marker} go", "olleh"), 30)
    assert final_of(events).answer == "hello|" + fake.sub_answer("ping")


def assert_restarted(events: list[rlm_pb2.CompletionEvent]) -> None:
    assert block(events).repl_restarted and block(events).error
    assert any(n.kind == "repl_restarted" for n in of_kind(events, "notice"))
    # The next turn ran in a fresh REPL with the context loaded again.
    assert final_of(events).answer == "after:3"


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sandbox_uid_pids() -> dict[int, str]:
    """Live processes of this module's sandbox uid range, with their cmdlines: owned by
    it on the host (root: the uid layer), or mapped to it in their user namespace (not
    root: userns-uid, whose processes the host sees as ours)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{entry}").st_uid
            if uid == os.getuid() != 0:
                with open(f"/proc/{entry}/uid_map") as f:
                    uid = int(f.read().split()[0])
            if UID_BASE <= uid < UID_BASE + UID_COUNT:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
    return found


async def wait_gone(pids: set[int] | list[int], seconds: float = 2.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
        if not alive:
            return []
        await asyncio.sleep(0.05)
    return [p for p in pids if os.path.exists(f"/proc/{p}")]


# --- secrets ----------------------------------------------------------------------
async def test_environment_and_proc_environ_hold_no_api_key(srv, stub, fake) -> None:
    events = await attack(stub, fake, f"""
        import os
        found = [repr(dict(os.environ))]
        for pid in {{'self', '1', str(os.getppid()), str({os.getpid()})}}:
            try:
                with open(f'/proc/{{pid}}/environ', 'rb') as f:
                    found.append(pid + '=' + f.read().decode(errors='replace'))
            except OSError as e:
                found.append(pid + ':' + type(e).__name__)
        for pid in os.listdir('/proc'):
            if pid.isdigit():
                try:
                    found.append(open(f'/proc/{{pid}}/environ', 'rb').read().decode())
                except OSError:
                    pass
        leak = '\\n'.join(found)
        print(leak)
        """, repl("FINAL(leak)"))
    answer = final_of(events).answer
    assert "PYTHONPATH" in answer  # the block really read the environment
    assert str(os.getpid()) + ":FileNotFoundError" in answer  # the service is not visible
    assert API_KEY not in all_text(events)
    assert "GEMINI" not in answer and "CANARY" not in answer
    await assert_healthy(srv, stub, fake)


# --- signals ----------------------------------------------------------------------
@pytest.mark.parametrize("kill", [
    "os.kill(os.getppid(), signal.SIGKILL)",
    "os.kill(1, signal.SIGKILL)",
    "os.killpg(0, signal.SIGKILL)",
    "import subprocess; subprocess.run(['kill', '-9', '-1'])",
    f"os.kill({os.getpid()}, signal.SIGKILL)",
], ids=["parent", "pid1", "killpg0", "kill-1", "service-pid"])
async def test_signals_reach_only_the_sandbox(srv, stub, fake, kill: str) -> None:
    events = await attack(stub, fake, f"""
        import os, signal
        try:
            {kill}
            print('ignored')
        except OSError as e:
            print('refused', type(e).__name__)
        """)
    # The signal was refused, ignored (a namespace's init ignores SIGKILL from
    # inside) or killed only sandbox processes, and the run went on; this test
    # process, which hosts the service, is still here to see it.
    assert final_of(events).answer == "after:3"
    if block(events).repl_restarted:
        assert_restarted(events)
    else:
        assert block(events).stdout.split()[0] in ("refused", "ignored"), block(events)
    await assert_healthy(srv, stub, fake)


# --- resources --------------------------------------------------------------------
async def test_fork_bomb_is_stopped_by_rlimit_nproc(srv, stub, fake) -> None:
    events = await attack(stub, fake, """
        import os, time
        pids, err = [], None
        try:
            while True:
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                pids.append(pid)
        except OSError as e:
            err = e.errno
        for p in pids:
            os.kill(p, 9)
            os.waitpid(p, 0)
        print('forked', len(pids), 'errno', err)
        """)
    out = block(events).stdout.split()
    assert out[:1] == ["forked"] and out[2] == "errno", block(events)
    assert 0 < int(out[1]) < srv.settings.sandbox_max_processes
    assert out[3] == "11"  # EAGAIN
    assert final_of(events).answer == "after:3"
    await assert_healthy(srv, stub, fake)


@pytest.mark.parametrize("loop", [
    "while True:\n    pass",
    # Swallows the interrupt: the service must kill the process instead.
    "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass",
], ids=["plain", "ignores-interrupt"])
async def test_cpu_loop_hits_block_timeout(srv, stub, fake, loop: str) -> None:
    started = time.monotonic()
    events = await attack(stub, fake, loop)
    b = block(events)
    assert b.timed_out and b.error and "TimeoutError" in b.stderr
    assert time.monotonic() - started < BLOCK_TIMEOUT + 2 * 2.0 + 3
    if "BaseException" in loop:
        assert_restarted(events)
    else:
        assert not b.repl_restarted
    assert final_of(events).answer == "after:3"
    await assert_healthy(srv, stub, fake)


@pytest.mark.parametrize("alloc", [
    "try:\n    b = bytearray(10 * 1024 ** 3)\nexcept MemoryError:\n    print('MemoryError caught')",
    "x = 'y' * (10 * 1024 ** 3)",
], ids=["caught", "uncaught"])
async def test_ten_gigabytes_is_refused(srv, stub, fake, alloc: str) -> None:
    rss_before = rss_kb()
    events = await attack(stub, fake, alloc)
    b = block(events)
    assert "MemoryError" in b.stdout + b.stderr
    assert not b.repl_restarted
    assert final_of(events).answer == "after:3"
    assert rss_kb() - rss_before < 200_000
    await assert_healthy(srv, stub, fake)


async def test_filling_the_disk_stops_at_the_tmpfs_cap(srv, stub, fake) -> None:
    events = await attack(stub, fake, """
        import errno, os
        chunk = b'\\0' * (1 << 20)
        report = {}
        for d in ('/tmp', '/dev/shm', '/', '/dev', '/opt', '/rlm'):
            written, err = 0, None
            try:
                with open(os.path.join(d, 'fill'), 'wb') as f:
                    while written < (64 << 20):
                        f.write(chunk)
                        f.flush()
                        written += len(chunk)
            except OSError as e:
                err = errno.errorcode.get(e.errno, str(e.errno))
            report[d] = (written >> 20, err)
        print(report)
        """, repl("FINAL(repr(report))"))
    report = ast.literal_eval(final_of(events).answer)
    for d in ("/tmp", "/dev/shm"):
        mb, err = report[d]
        assert err == "ENOSPC" and mb <= TMP_MB, report
    for d in ("/", "/dev", "/opt", "/rlm"):
        assert report[d] == (0, "EROFS"), report
    await assert_healthy(srv, stub, fake)


# --- the file system --------------------------------------------------------------
@pytest.mark.parametrize("target", [
    str(PROJECT_DIR / "PWNED"), "/etc/passwd", "/usr/PWNED", "/usr/bin/python3",
    "/rlm/run/PWNED", "RUN_DIR", "/opt/rlm/pkg/rlm_service/__init__.py", "/opt/rlm/site/PWNED",
], ids=["project", "etc-passwd", "usr", "usr-python", "guest-run-dir", "host-run-dir",
        "package", "site"])
async def test_writes_outside_tmp_fail(srv, stub, fake, target: str) -> None:
    assert srv.runtime_dir is not None
    runs = srv.runtime_dir / "runs"
    if target == "RUN_DIR":
        target = str(runs / "PWNED")
    watched = [Path("/etc/passwd"), Path("/usr/bin/python3"),
               PROJECT_DIR / "rlm_service" / "__init__.py"]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in watched if p.exists()}
    events = await attack(stub, fake, f"""
        import os
        try:
            with open({target!r}, 'a') as f:
                f.write('pwned')
            print('WROTE')
        except OSError as e:
            print('refused', type(e).__name__)
        try:
            os.makedirs(os.path.join(os.path.dirname({target!r}), 'pwned-dir'))
            print('MKDIR')
        except OSError as e:
            print('refused', type(e).__name__)
        """)
    out = block(events).stdout
    if target.startswith("/tmp/"):
        # The host's run dir lies under /tmp, which in the sandbox is its own tmpfs:
        # whatever it wrote there landed in that tmpfs (checked on the host below).
        assert out.count("refused") + out.count("WROTE") + out.count("MKDIR") == 2, out
    else:
        assert "WROTE" not in out and "MKDIR" not in out and out.count("refused") == 2, out
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in watched if p.exists()}
    assert before == after
    for p in (PROJECT_DIR / "PWNED", Path("/usr/PWNED"), runs / "PWNED",
              PROJECT_DIR / "pwned-dir", runs / "pwned-dir"):
        assert not p.exists(), p
    await assert_healthy(srv, stub, fake)


async def test_host_directories_are_absent(srv, stub, fake) -> None:
    events = await attack(stub, fake, f"""
        import os
        seen = {{}}
        for p in ('/root', '/home', '/work', '/etc', {str(PROJECT_DIR)!r}, '/var', '/run',
                  '/sys', {str(PROJECT_DIR / "pyproject.toml")!r}, '/etc/shadow'):
            try:
                seen[p] = sorted(os.listdir(p)) if os.path.isdir(p) else open(p).read()[:50]
            except OSError as e:
                seen[p] = type(e).__name__
        print(seen)
        print(sorted(os.listdir('/')))
        """, repl("FINAL(repr(seen))"))
    seen = ast.literal_eval(final_of(events).answer)
    assert set(seen.values()) == {"FileNotFoundError"}, seen
    top = ast.literal_eval(block(events).stdout.splitlines()[-1])
    assert set(top) <= {"usr", "bin", "lib", "lib64", "lib32", "sbin", "proc", "dev", "tmp",
                        "opt", "rlm"}, top
    await assert_healthy(srv, stub, fake)


async def test_only_the_guest_part_of_the_service_is_inside(srv, stub, fake) -> None:
    events = await attack(stub, fake, """
        import importlib, os, rlm_service
        for name in ('rlm_service.config', 'rlm_service.models.gemini', 'rlm_service.server'):
            try:
                importlib.import_module(name)
                print(name, 'imported')
            except ImportError:
                print(name, 'missing')
        print(sorted(os.listdir(os.path.dirname(rlm_service.__file__))))
        """)
    lines = block(events).stdout.splitlines()
    assert lines[:3] == ["rlm_service.config missing", "rlm_service.models.gemini missing",
                         "rlm_service.server missing"], lines
    assert ast.literal_eval(lines[3]) == ["__init__.py", "_gen", "repl_guest"]
    await assert_healthy(srv, stub, fake)


# --- the network ------------------------------------------------------------------
@pytest.mark.parametrize("where", ["server", "metadata", "fake-model", "metrics", "ipv6"])
async def test_network_is_unreachable(srv, stub, fake, where: str) -> None:
    host, port = {
        "server": ("127.0.0.1", srv.port),
        "metadata": ("169.254.169.254", 80),
        "fake-model": ("127.0.0.1", int(fake.base_url.rsplit(":", 1)[1])),
        "metrics": ("127.0.0.1", srv.metrics_port or 9),
        "ipv6": ("::1", srv.port),
    }[where]
    events = await attack(stub, fake, f"""
        import socket
        try:
            socket.create_connection(({host!r}, {port}), timeout=1).close()
            print('CONNECTED')
        except OSError as e:
            print('blocked', type(e).__name__)
        """)
    out = block(events).stdout
    assert "CONNECTED" not in out and "blocked" in out, out
    await assert_healthy(srv, stub, fake)


async def test_dns_lookup_fails(srv, stub, fake) -> None:
    events = await attack(stub, fake, """
        import socket
        for name in ('example.com', 'metadata.google.internal', 'localhost'):
            try:
                print('RESOLVED', name, socket.getaddrinfo(name, 80)[0][4])
            except OSError as e:
                print('failed', name, type(e).__name__)
        """)
    out = block(events).stdout
    assert "failed example.com gaierror" in out
    assert "RESOLVED example.com" not in out and "RESOLVED metadata" not in out
    await assert_healthy(srv, stub, fake)


# --- processes that try to outlive the block ---------------------------------------
async def test_daemons_die_with_the_run(srv, stub, fake) -> None:
    seen: dict[str, Any] = {}

    def second_turn(req: Req) -> str:
        # Runs in the fake's thread while the run waits for this turn: its REPL is busy.
        for _ in range(20):
            try:
                seen["busy"] = busy_repl_pids(srv)
                break
            except RuntimeError:  # the pool's set changed while we read it
                time.sleep(0.01)
        seen["uid"] = {p: c for p, c in sandbox_uid_pids().items() if "sleep 30" in c}
        return AFTER

    events = await attack(stub, fake, """
        import os, subprocess, time
        subprocess.Popen("setsid sh -c 'sleep 300' >/dev/null 2>&1 &", shell=True)
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv('/usr/bin/sleep', ['sleep', '301'])
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.3)
        print('daemons started')
        """, second_turn)
    assert block(events).stdout.strip() == "daemons started"
    assert final_of(events).answer == "after:3"
    daemons = seen["uid"]
    sleeps = sorted(c.split()[1] for c in daemons.values() if c.startswith("sleep "))
    assert sleeps == ["300", "301"], daemons
    assert set(daemons) <= seen["busy"]
    assert not await wait_gone(seen["busy"] | set(daemons))
    await assert_healthy(srv, stub, fake)


# --- output floods ----------------------------------------------------------------
@pytest.mark.parametrize("flood", [
    "while True:\n    print('x' * 10000)",
    "import os\nwhile True:\n    os.write(1, b'x' * 65536)",
    "import os\nwhile True:\n    os.write(2, b'e' * 65536)",
    "import subprocess\nsubprocess.run(['sh', '-c', 'yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'])",
], ids=["print", "fd1", "fd2", "child-yes"])
async def test_output_flood_is_capped(srv, stub, fake, flood: str) -> None:
    rss_before = rss_kb()
    events = await attack(stub, fake, flood)
    b = block(events)
    assert b.timed_out and b.truncated
    assert len(b.stdout) <= MAX_OUTPUT + 200 and len(b.stderr) <= MAX_OUTPUT + 400
    assert "output cut" in b.stdout + b.stderr
    assert final_of(events).answer == "after:3"
    assert rss_kb() - rss_before < 100_000, "the service buffered the flood"
    await assert_healthy(srv, stub, fake)


# --- file descriptors and the control channel --------------------------------------
CTRL = "import sys\nctrl = int(sys.argv[sys.argv.index('--ctrl-fd') + 1])\n"


@pytest.mark.parametrize("fds", [
    "import os\nos.closerange(0, 1024)",
    CTRL + "import os\nnull = os.open('/dev/null', os.O_WRONLY)\nos.dup2(null, ctrl)",
    CTRL + "import os\nos.dup2(ctrl, 1)\nos.write(1, b'\\xff\\xff\\xff\\xffgarbage')",
    CTRL + "import os\nos.dup2(os.open('/dev/zero', os.O_RDONLY), ctrl)",
], ids=["closerange", "dup2-null-over-ctrl", "garbage-on-ctrl", "dup2-zero-over-ctrl"])
async def test_control_channel_sabotage_restarts_the_repl(srv, stub, fake, fds: str) -> None:
    events = await attack(stub, fake, fds)
    assert_restarted(events)
    await assert_healthy(srv, stub, fake)


async def test_dup2_over_stdout_stderr_keeps_the_repl(srv, stub, fake) -> None:
    events = await attack(stub, fake, """
        import os
        null = os.open('/dev/null', os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.write(1, b'lost')
        kept = 41
        """, repl("print('still here')\nFINAL(kept + 1)"))
    assert not block(events).repl_restarted
    assert block(events, 1).stdout.strip() == "still here"
    assert final_of(events).answer == "42"
    await assert_healthy(srv, stub, fake)


@pytest.mark.parametrize("frame", [
    '{"ok": true, "stdout_total": "many", "duration": "long", "vars": 5}',
    "[" * 100_000 + "]" * 100_000,
    '"just a string"',
], ids=["bad-types", "nesting-bomb", "not-an-object"])
async def test_forged_control_frames_are_contained(srv, stub, fake, frame: str) -> None:
    events = await attack(stub, fake, CTRL + f"""
import os, struct
body = {frame!r}.encode()
os.write(ctrl, struct.pack('>I', len(body)) + body)
""")
    # The service drops the REPL that broke the protocol; the run goes on with a fresh one.
    assert_restarted(events)
    await assert_healthy(srv, stub, fake)


async def test_forged_answer_pushes_cannot_flood_the_service(srv, stub, fake) -> None:
    events = await attack(stub, fake, CTRL + """
import os, struct, json
body = json.dumps({"push": "partial", "content": "x" * 100_000}).encode()
frame = struct.pack('>I', len(body)) + body
while True:
    os.write(ctrl, frame)
""")
    # The host stops reading after a few pushes: the REPL is dropped well
    # before the block timeout, and the run goes on with a fresh one.
    assert_restarted(events)
    assert block(events).duration_seconds < BLOCK_TIMEOUT
    assert "answer updates" in block(events).stderr
    await assert_healthy(srv, stub, fake)


# --- ways to die ------------------------------------------------------------------
@pytest.mark.parametrize("death", [
    "import os\nos._exit(3)",
    "import ctypes\nctypes.string_at(0)",
    "import os\nos.abort()",
    "import sys\nsys.setrecursionlimit(10 ** 6)\ndef g(n):\n    return list(map(g, [n + 1]))\ng(0)",
], ids=["os_exit", "segv", "abort", "c-stack-overflow"])
async def test_crash_gives_a_fresh_repl(srv, stub, fake, death: str) -> None:
    events = await attack(stub, fake, death)
    assert_restarted(events)
    assert "REPL process" in block(events).stderr
    await assert_healthy(srv, stub, fake)


async def test_sys_exit_is_ignored(srv, stub, fake) -> None:
    events = await attack(stub, fake, "kept = 7\nimport sys\nsys.exit(3)",
                          repl("FINAL(kept * 6)"))
    assert "SystemExit" in block(events).stderr and not block(events).repl_restarted
    assert final_of(events).answer == "42"
    await assert_healthy(srv, stub, fake)


async def test_recursion_bomb_is_a_recursion_error(srv, stub, fake) -> None:
    events = await attack(stub, fake, "def f():\n    f()\nf()")
    assert "RecursionError" in block(events).stderr and not block(events).repl_restarted
    assert final_of(events).answer == "after:3"
    await assert_healthy(srv, stub, fake)


# --- privileges -------------------------------------------------------------------
async def test_privilege_escalation_fails(srv, stub, fake) -> None:
    events = await attack(stub, fake, """
        import ctypes, os, subprocess
        libc = ctypes.CDLL(None, use_errno=True)
        res = {'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid()}
        for name, call in (('setuid', lambda: os.setuid(0)), ('setgid', lambda: os.setgid(0)),
                           ('seteuid', lambda: os.seteuid(0)),
                           ('setgroups', lambda: os.setgroups([0]))):
            try:
                call()
                res[name] = 'OK'
            except OSError as e:
                res[name] = type(e).__name__
        for flag, name in ((0x10000000, 'newuser'), (0x40000000, 'newnet'),
                           (0x00020000, 'newns'), (0x20000000, 'newpid')):
            rc = libc.unshare(flag)
            res['unshare_' + name] = 'OK' if rc == 0 else ctypes.get_errno()
        r = subprocess.run(['unshare', '-Ur', 'id'], capture_output=True, text=True)
        res['unshare_cmd'] = (r.returncode, r.stdout.strip())
        r = subprocess.run(['mount', '-t', 'tmpfs', 'x', '/tmp'], capture_output=True, text=True)
        res['mount'] = r.returncode
        res['caps'] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')]
        res['nnp'] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')]
        print(res)
        """, repl("FINAL(repr(res))"))
    res = ast.literal_eval(final_of(events).answer)
    assert UID_BASE <= res["uid"] < UID_BASE + UID_COUNT and res["euid"] == res["uid"]
    for name in ("setuid", "setgid", "seteuid", "setgroups"):
        assert res[name] in ("PermissionError", "OSError"), res  # EPERM, or EINVAL: unmapped
    for name in ("newuser", "newnet", "newns", "newpid"):
        assert res["unshare_" + name] != "OK", res
    assert res["unshare_cmd"][0] != 0 and "uid=0" not in res["unshare_cmd"][1]
    assert res["mount"] != 0
    assert res["caps"] == ["0000000000000000"] and res["nnp"] == ["1"]
    await assert_healthy(srv, stub, fake)


async def test_other_processes_cannot_be_traced_or_read(srv, stub, fake) -> None:
    host_pids = [os.getpid(), *sorted(busy_repl_pids(srv) | srv.repl_pids("idle"))]
    events = await attack(stub, fake, f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        res = {{'visible': sorted(int(p) for p in os.listdir('/proc') if p.isdigit())}}
        for pid in {host_pids!r}:
            rc = libc.ptrace(16, pid, 0, 0)  # PTRACE_ATTACH
            res[f'ptrace{{pid}}'] = 'OK' if rc == 0 else ctypes.get_errno()
            try:
                with open(f'/proc/{{pid}}/mem', 'rb') as f:
                    res[f'mem{{pid}}'] = 'OK'
            except OSError as e:
                res[f'mem{{pid}}'] = type(e).__name__
        print(res)
        """, repl("FINAL(repr(res))"))
    res = ast.literal_eval(final_of(events).answer)
    # Only the sandbox's own PID namespace is visible: bwrap's init, the REPL, maybe a child.
    assert len(res["visible"]) <= 3 and max(res["visible"]) < 100, res
    for pid in host_pids:
        if pid not in res["visible"]:
            # ESRCH (not in this PID namespace), or EPERM from the seccomp filter first.
            assert res[f"ptrace{pid}"] in (1, 3) and res[f"mem{pid}"] == "FileNotFoundError", res
    await assert_healthy(srv, stub, fake)


# --- the LLMQuery callback socket --------------------------------------------------
CALLBACK_PROBE = """
import grpc
from rlm_service._gen.rlm.internal.v1 import llm_query_pb2 as pb, llm_query_pb2_grpc as pbg
channel = grpc.insecure_channel('unix:///rlm/run/callback.sock')
raw = pbg.LLMQueryServiceStub(channel)
def try_secret(secret):
    try:
        raw.Query(pb.QueryRequest(prompt='FORGED-CALL'),
                  metadata=(('x-rlm-run-secret', secret),), timeout=5)
        return 'ACCEPTED'
    except grpc.RpcError as e:
        return e.code().name
"""


async def test_forged_secret_is_unauthenticated(srv, stub, fake) -> None:
    before = len([r for r in fake.calls_for("fake-sub") if "FORGED-CALL" in r.last_user_text])
    events = await attack(stub, fake, CALLBACK_PROBE + code("""
        own = llm_query.__self__.client.secret
        results = [try_secret(s) for s in ('forged', '', 'A' * 43, own[:-1] + '!', own + 'x',
                                           own.upper() if own != own.upper() else own.lower())]
        print(results)
        """))
    results = ast.literal_eval(block(events).stdout)
    assert results == ["UNAUTHENTICATED"] * 6
    after = len([r for r in fake.calls_for("fake-sub") if "FORGED-CALL" in r.last_user_text])
    assert after == before
    await assert_healthy(srv, stub, fake)


async def test_other_runs_secret_cannot_be_discovered(srv, stub, fake) -> None:
    """A victim run holds a live REPL while the attacker searches /proc and the file
    system for its secret and tries every candidate on the callback socket."""
    release = threading.Event()

    def victim_turn(req: Req) -> str:
        if release.is_set():
            return repl("FINAL('victim done')")
        return repl("import time\ntime.sleep(0.5)\nprint('victim secret holder')")

    victim_marker = f"VICTIM-{uuid.uuid4().hex}"
    fake.script(victim_marker, [victim_turn])
    victim = asyncio.create_task(collect(stub, f"{victim_marker} go", "victim-ctx",
                                         max_iterations=200))
    deadline = time.monotonic() + 10
    while not any(victim_marker in r.prompt for r in srv.engine.registry.runs()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    victim_secret = next(r.secret for r in srv.engine.registry.runs()
                         if victim_marker in r.prompt)
    try:
        events = await attack(stub, fake, CALLBACK_PROBE + code(r"""
            import os, re
            own = llm_query.__self__.client.secret
            blob = []
            for pid in os.listdir('/proc'):
                if not pid.isdigit():
                    continue
                for name in ('environ', 'cmdline', 'maps', 'status', 'stack'):
                    try:
                        blob.append(open(f'/proc/{pid}/{name}', 'rb').read())
                    except OSError:
                        pass
                try:
                    for fd in os.listdir(f'/proc/{pid}/fd'):
                        blob.append(os.readlink(f'/proc/{pid}/fd/{fd}').encode())
                except OSError:
                    pass
            for root in ('/tmp', '/dev/shm', '/rlm'):
                for d, _, files in os.walk(root):
                    for f in files:
                        try:
                            blob.append(open(os.path.join(d, f), 'rb').read(1 << 20))
                        except OSError:
                            pass
            text = b'\n'.join(blob).decode('latin-1')
            candidates = set(re.findall(r'[A-Za-z0-9_-]{43}', text)) - {own}
            accepted = [c for c in candidates if try_secret(c) != 'UNAUTHENTICATED']
            print(len(blob), len(candidates), accepted)
            found = sorted(candidates)
            """), repl("FINAL(repr(found))"))
        assert victim_secret not in all_text(events)
        assert block(events).stdout.split()[-1:] == ["[]"], block(events)  # none accepted
        assert srv.engine.registry.lookup(victim_secret) is not None  # live all along
    finally:
        release.set()
    victim_events = await asyncio.wait_for(victim, 30)
    assert final_of(victim_events).answer == "victim done"
    await assert_healthy(srv, stub, fake)


# --- cancellation and the end of the service ---------------------------------------
async def test_cancel_during_a_block_that_never_returns(srv, stub, fake) -> None:
    marker = f"RT-{uuid.uuid4().hex}"
    fake.script(marker, [repl(code("""
        import subprocess, time
        subprocess.Popen(['setsid', 'sleep', '302'])
        while True:
            try:
                time.sleep(100)
            except BaseException:
                pass
        """))])
    call = stub.StreamCompletion(make_request(f"{marker} go", "ctx"))
    async for event in call:
        if event.HasField("root_turn"):
            break
    deadline = time.monotonic() + 10.0
    while not any("sleep 302" in c for c in sandbox_uid_pids().values()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    running = busy_repl_pids(srv)
    call.cancel()
    assert not await wait_gone(running, 2.0)
    assert not any("sleep 302" in c for c in sandbox_uid_pids().values())
    await assert_healthy(srv, stub, fake)
