"""The service runs wherever it is cloned: a fresh clone under a 0700 folder, as root and
as a user in their own 0700 home, serves a real run with every sandbox layer the machine
allows (and no SANDBOX_ALLOW_MISSING).

Each test clones this checkout (HEAD plus the working tree's changes), builds a venv
inside the private folder whose site-packages are hard links to this venv's (cheap, and
they resolve inside the private folder, which is what broke), and starts ``rlm-server``
from the clone as a subprocess against the fake Gemini API.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from tests.conftest import process_tree, repl
from tests.fakes.gemini import FakeGemini
from tests.ops.conftest import PROJECT_ROOT, ServerProcess, base_env, guest_pids, wait_for

UID_BASE, UID_COUNT = 200_000, 10_000  # Settings' defaults
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
SITE = Path(grpc.__file__).resolve().parent.parent
# This checkout's own install; the clone gets its own .pth instead.
NOT_LINKED = ("__editable__", "rlm_service", "__pycache__", "rlm-clone.pth")


def _git(*args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-c", f"safe.directory={PROJECT_ROOT}", "-C",
                           str(PROJECT_ROOT), *args], check=True, capture_output=True,
                          timeout=60, **kwargs)  # type: ignore[call-overload, no-any-return]


def _skip_without_git() -> None:
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("needs a git checkout to clone")


def clone_checkout(dest: Path) -> None:
    """``git clone`` of this checkout, with its uncommitted changes and new files."""
    r = subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(dest)],
                       capture_output=True, timeout=120, check=False)
    if r.returncode and b"dubious ownership" in r.stderr:
        pytest.skip("git will not clone a checkout another user owns")
    r.check_returncode()
    diff = _git("diff", "HEAD", "--binary").stdout
    if diff.strip():
        subprocess.run(["git", "-C", str(dest), "apply", "--binary", "-"], input=diff,
                       check=True, capture_output=True, timeout=60)
    for name in _git("ls-files", "-z", "--others", "--exclude-standard").stdout.split(b"\0"):
        if name:
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / os.fsdecode(name), target)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def make_venv(python: str, clone: Path) -> Path:
    """A venv in ``clone`` with this venv's packages and the clone on its path."""
    venv = clone / ".venv"
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True, timeout=120)
    site = venv / "lib" / PY / "site-packages"
    for entry in SITE.iterdir():
        if entry.name.startswith(NOT_LINKED):
            continue
        if entry.is_dir():
            shutil.copytree(entry, site / entry.name, copy_function=_link_or_copy,
                            dirs_exist_ok=True)
        else:
            _link_or_copy(str(entry), str(site / entry.name))
    # A new file: writing through a hard link would change this venv's too.
    (site / "rlm-clone.pth").unlink(missing_ok=True)
    (site / "rlm-clone.pth").write_text(f"{clone}\n")
    return venv / "bin" / "python"


def _reachable_by_all(path: Path) -> bool:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in path.resolve().parents)


def _status_uids(pid: int) -> set[int]:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("Uid:"))
    return {int(x) for x in line.split()[1:]}


PROBE = """
import os
try:
    open({secret!r}).read()
    secret = 'read'
except OSError as e:
    secret = type(e).__name__
try:
    os.kill({service_pid}, 0)
    kill = 'alive'
except OSError as e:
    kill = type(e).__name__
FINAL(f'uid={{os.getuid()}} secret={{secret}} kill={{kill}}')
"""


def serve_one_run(fake: FakeGemini, server: ServerProcess, secret: Path) -> tuple[int, str]:
    """(the REPL's uid as it sees it, the rest of its report) for one run."""
    server.start()
    server.wait_ready(timeout=60)
    ready = server.wait_log("rlm-service listening")
    assert not [r for r in server.logs() if "WITHOUT" in r["message"]], server.logs()
    fake.script("MARK-ANYWHERE", [repl(PROBE.format(secret=str(secret),
                                                    service_pid=server.pid))])
    with grpc.insecure_channel(server.target()) as channel:
        events = list(rlm_pb2_grpc.RLMServiceStub(channel).StreamCompletion(
            make_request("MARK-ANYWHERE where am i"), timeout=60))
    assert events[-1].HasField("final_answer"), (events[-1], server.stderr[-10:])
    answer = events[-1].final_answer.answer
    uid, rest = answer.split(" ", 1)
    assert list(ready["sandbox_layers"]) == list(events[0].run_started.sandbox_layers)
    return int(uid.removeprefix("uid=")), rest


def host_uids_of_repls(server: ServerProcess) -> dict[int, set[int]]:
    """{pid: uids} of the pool's idle REPL processes (bwrap stages and the guest)."""
    def scan() -> dict[int, set[int]]:
        pids = process_tree(server.pid) & guest_pids()
        return {pid: _status_uids(pid) for pid in pids} if len(pids) >= 2 else {}

    def settled() -> dict[int, set[int]]:
        # A REPL being started right now (the pool refills) still runs as root in its
        # stage or its cgroup join; wait for one that has dropped to its own uid.
        found = scan()
        return found if any(u and min(u) >= UID_BASE for u in found.values()) else {}
    try:
        result: dict[int, set[int]] = wait_for(settled, 30.0, 0.1)
    except AssertionError:
        return scan()  # the caller's assertion then shows what was seen
    return result


@pytest.fixture
def private_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="rlm-anywhere-"))
    os.chmod(base, 0o700)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the root case needs root")
def test_root_serves_from_a_clone_under_a_0700_folder(
        fake_gemini: FakeGemini, private_dir: Path) -> None:
    _skip_without_git()
    home = private_dir / "home" / "x"
    home.mkdir(parents=True, mode=0o700)
    clone = home / "clone"
    clone_checkout(clone)
    interpreter = os.path.realpath(sys.executable)
    python = make_venv(interpreter, clone)
    secret = home / "secret.txt"
    secret.write_text("not for the sandbox")
    tmp = home / "tmp"  # the runtime dir (socket, run dirs) lands under the 0700 folder too
    tmp.mkdir(mode=0o700)
    # The test's own interpreter (in /root/.pyenv on a dev box) also lives under a 0700
    # folder often: the sandbox must reach it too.
    env = base_env(fake_gemini, tmp, SANDBOX_PYTHON=interpreter, HOME=str(home))
    server = ServerProcess([str(python), "-c", "from rlm_service.cli import server_main; "
                            "server_main()"], env, cwd=clone)
    try:
        uid, rest = serve_one_run(fake_gemini, server, secret)
        assert UID_BASE <= uid < UID_BASE + UID_COUNT, uid
        assert rest == "secret=FileNotFoundError kill=ProcessLookupError", rest
        ready = server.wait_log("rlm-service listening")
        assert "uid" in ready["sandbox_layers"] and "readonly-fs" in ready["sandbox_layers"]
        # The sandbox uid cannot walk into the clone: a root stage mounted it.
        assert server.wait_log("sandbox ready")["sandbox_staged"] is True
        # The mounts come from the clone; on the host the guest runs under its own uid.
        assert guest_pids(under=clone)
        uids = host_uids_of_repls(server)
        assert any(u and min(u) >= UID_BASE for u in uids.values()), uids
    finally:
        server.kill_tree()


@contextlib.contextmanager
def service_user(private_dir: Path) -> Iterator[tuple[int, int, Path]]:
    """(uid, gid, 0700 home) of a non-root user: a new one when the tests run as root
    (as in CI), else the user running them."""
    if os.geteuid() != 0:
        home = private_dir / "home"
        home.mkdir(mode=0o700)
        yield os.getuid(), os.getgid(), home
        return
    if shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("needs useradd and setpriv to run the service as another user")
    os.chmod(private_dir, 0o711)
    name = f"rlmt{os.getpid() % 1_000_000}"
    home = private_dir / name
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                    "/usr/sbin/nologin", "--user-group", name], check=True,
                   capture_output=True, timeout=60)
    try:
        entry = pwd.getpwnam(name)
        home.mkdir(mode=0o700)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        yield entry.pw_uid, entry.pw_gid, home
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True, timeout=60)


def test_non_root_user_serves_from_their_0700_home(
        fake_gemini: FakeGemini, private_dir: Path) -> None:
    _skip_without_git()
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    with service_user(private_dir) as (uid, gid, home):
        interpreter = next((c for c in (os.path.realpath(sys.executable),
                                        f"/usr/local/bin/{PY}", f"/usr/bin/{PY}")
                            if os.path.exists(c) and (uid == os.getuid()
                                                      or _reachable_by_all(Path(c)))), None)
        if interpreter is None:
            pytest.skip(f"no {PY} that uid {uid} may run")
        clone = home / "clone"
        clone_checkout(clone)
        python = make_venv(interpreter, clone)
        secret = home / "secret.txt"
        secret.write_text("the service user's, not the sandbox's")
        tmp = home / "tmp"
        tmp.mkdir(mode=0o700)
        for p in (secret, tmp):
            os.chown(p, uid, gid)
        os.chmod(secret, 0o600)
        argv = [str(python), "-c", "from rlm_service.cli import server_main; server_main()"]
        if uid != os.getuid():
            argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
                    *argv]
        server = ServerProcess(argv, base_env(fake_gemini, tmp, HOME=str(home)), cwd=clone)
        try:
            seen_uid, rest = serve_one_run(fake_gemini, server, secret)
            assert _status_uids(server.pid) == {uid}
            ready = server.wait_log("rlm-service listening")
            assert "userns-uid" in ready["sandbox_layers"], ready
            assert "uid" not in ready["sandbox_layers"]
            assert server.wait_log("sandbox ready")["sandbox_staged"] is False
            # A uid of its own in its namespace; neither the service's unmounted files
            # nor its process are within reach.
            assert seen_uid != uid and UID_BASE <= seen_uid < UID_BASE + UID_COUNT, seen_uid
            assert rest == "secret=FileNotFoundError kill=ProcessLookupError", rest
            # What the host sees: the service's own uid (docs/security.md says so).
            assert set().union(*host_uids_of_repls(server).values()) == {uid}
        finally:
            server.kill_tree()
