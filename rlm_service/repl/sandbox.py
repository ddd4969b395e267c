"""How a REPL process is isolated: bubblewrap plus an unprivileged uid.

Why bubblewrap: it is a small, maintained, setuid-free tool (used by Flatpak)
that builds a sandbox from kernel namespaces in one exec, packaged by Debian.
Each REPL gets:

* ``uid``: a uid/gid of its own from a range no real user has, so it cannot
  signal, trace or read the service or other runs (needs the service to be root);
* ``namespaces``: new user, PID, network, IPC, UTS and cgroup namespaces (no
  network at all, not even loopback; the callback is a Unix socket bound in);
* ``readonly-fs``: a fresh root with only ``/usr``, the Python packages and the
  run's files mounted read-only; no ``/home``, ``/root``, ``/etc`` or project tree;
* ``tmpfs``: a private ``/tmp`` with a size cap;
* ``rlimits``: memory, CPU time, processes, open files, file size, no core dumps;
* ``no-new-privs`` and ``die-with-parent`` (set by bubblewrap).

A layer the host cannot provide is refused at start-up unless
``SANDBOX_ALLOW_MISSING`` names it; the active layers are logged and reported.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlm_service.config import Settings

log = logging.getLogger(__name__)

ALL_LAYERS = ("uid", "namespaces", "readonly-fs", "tmpfs", "rlimits", "no-new-privs")
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# The parts of the package the in-sandbox REPL imports (see repl_guest/main.py).
GUEST_PACKAGE_PARTS = ("__init__.py", "repl_guest", "_gen")
GUEST_RUN_DIR = "/rlm/run"
GUEST_SOCKET = "/rlm/callback.sock"
GUEST_PKG_ROOT = "/opt/rlm/pkg"
GUEST_SITE = "/opt/rlm/site"


class SandboxUnavailable(RuntimeError):
    """The host cannot provide a required isolation layer."""


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] | None
    popen_kwargs: dict[str, Any] = field(default_factory=dict)


def _world_accessible(path: Path) -> bool:
    """Whether a uid with no special rights can reach and read ``path``."""
    try:
        path = path.resolve()
        for parent in [*reversed(path.parents), path]:
            mode = os.stat(parent).st_mode
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
                return False
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def _site_dir() -> Path:
    import grpc

    return Path(grpc.__file__).resolve().parent.parent


class Sandbox:
    """Builds REPL launch commands; one per service process."""

    def __init__(self, settings: Settings, runtime_dir: Path, callback_socket: Path) -> None:
        self.settings = settings
        self.runtime_dir = runtime_dir
        self.callback_socket = callback_socket
        allowed = {x.strip() for x in settings.sandbox_allow_missing.split(",") if x.strip()}
        self._allow_all = "all" in allowed
        self._allowed = set(ALL_LAYERS) if self._allow_all else allowed
        self._uids = itertools.count()
        self.bwrap = shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")
        self.is_root = os.geteuid() == 0
        self.python = self._pick_python()
        self.site = _site_dir()
        self.layers = self._plan_layers()

    # --- planning ---------------------------------------------------------------
    def _pick_python(self) -> str:
        want = f"python{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [
            self.settings.sandbox_python,
            os.path.realpath(sys.executable),
            f"/usr/local/bin/{want}",
            f"/usr/bin/{want}",
        ]
        for c in candidates:
            if c and os.path.exists(c) and (not self.is_root or _world_accessible(Path(c))):
                return c
        return os.path.realpath(sys.executable)

    def _plan_layers(self) -> tuple[str, ...]:
        active: list[str] = []
        if self.bwrap:
            active += ["namespaces", "readonly-fs", "tmpfs", "no-new-privs"]
        if self.is_root and self.setpriv:
            active.append("uid")
        active.append("rlimits")
        missing = [x for x in ALL_LAYERS if x not in active]
        refused = [x for x in missing if x not in self._allowed]
        if refused:
            reasons = {
                "uid": "the service is not root (or setpriv is missing), so it cannot run "
                       "REPLs under another uid",
                "namespaces": "bubblewrap (bwrap) is not installed",
            }
            why = "; ".join(reasons.get(x, f"{x} unavailable") for x in refused)
            raise SandboxUnavailable(
                f"sandbox layers missing: {', '.join(refused)} ({why}). Install bubblewrap "
                "and run as root, or set SANDBOX_ALLOW_MISSING to the layers you accept "
                "losing (weaker isolation)."
            )
        if missing:
            log.warning("sandbox running WITHOUT layers %s", ", ".join(missing),
                        extra={"sandbox_layers": active, "sandbox_missing": missing})
        if "readonly-fs" in active and self.is_root:
            for p in (Path(self.python), self.site, PACKAGE_DIR):
                if not _world_accessible(p):
                    raise SandboxUnavailable(
                        f"{p} is not readable by the sandbox uid; set SANDBOX_PYTHON to a "
                        "world-readable interpreter or install the service outside /root"
                    )
        return tuple(active)

    def next_uid(self) -> int:
        return self.settings.sandbox_uid_base + next(self._uids) % self.settings.sandbox_uid_count

    # --- launch -------------------------------------------------------------------
    def guest_limits(self) -> dict[str, int]:
        s = self.settings
        return {
            "as_bytes": s.sandbox_memory_mb * 1024 * 1024,
            "cpu_seconds": s.sandbox_cpu_seconds,
            # RLIMIT_NPROC counts per uid: only meaningful when each run has its own.
            "processes": s.sandbox_max_processes if "uid" in self.layers else 0,
            "open_files": s.sandbox_max_open_files,
            "file_bytes": s.sandbox_max_file_mb * 1024 * 1024,
        }

    def launch(self, run_dir: Path, ctrl_fd: int, uid: int) -> Launch:
        guest_args = [
            "-s", "-B", "-m", "rlm_service.repl_guest",
            "--ctrl-fd", str(ctrl_fd),
            "--limits", json.dumps(self.guest_limits()),
            "--max-output", str(self.settings.max_output_chars),
        ]
        kwargs: dict[str, Any] = {"pass_fds": (ctrl_fd,), "start_new_session": True}
        # setpriv drops to the run's uid after exec. Popen(user=...) would do it in a
        # forked copy of this multi-threaded (gRPC) process instead of a vfork child,
        # which is slower and can crash between fork and exec.
        drop = ([self.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
                if "uid" in self.layers and self.setpriv else [])
        if "namespaces" not in self.layers or self.bwrap is None:
            env = {
                "PYTHONPATH": f"{PACKAGE_DIR.parent}{os.pathsep}{self.site}",
                "HOME": str(run_dir),
                "PATH": "/usr/bin:/bin",
                "LANG": "C.UTF-8",
            }
            return Launch([*drop, self.python, *guest_args], env, {**kwargs, "cwd": run_dir})
        # --disable-userns: no nested user namespace (a fresh "root" with mount rights
        # inside); it needs an explicit --unshare-user.
        argv = [*drop, self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns",
                "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "lib", "lib64", "lib32", "sbin"):
            p = Path("/") / name
            if p.is_symlink():
                argv += ["--symlink", os.readlink(p), str(p)]
            elif p.is_dir():
                argv += ["--ro-bind", str(p), str(p)]
        prefix = Path(self.python).resolve().parent.parent
        if not str(prefix).startswith("/usr"):
            argv += ["--ro-bind", str(prefix), str(prefix)]
        tmp_bytes = self.settings.sandbox_tmp_mb * 1024 * 1024
        argv += [
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(tmp_bytes), "--tmpfs", "/tmp",
            "--size", str(tmp_bytes), "--tmpfs", "/dev/shm",
            "--ro-bind", str(self.site), GUEST_SITE,
            # Only what the guest imports: model code finds no config, server or
            # backend modules to poke at.
            *(arg for part in GUEST_PACKAGE_PARTS for arg in (
                "--ro-bind", str(PACKAGE_DIR / part),
                f"{GUEST_PKG_ROOT}/{PACKAGE_DIR.name}/{part}")),
            "--ro-bind", str(run_dir), GUEST_RUN_DIR,
            "--bind", str(self.callback_socket), GUEST_SOCKET,
            # bwrap's own root and /dev are tmpfs with no size cap, writable by the
            # sandbox uid: read-only, so /tmp and /dev/shm (capped) are the only space.
            "--remount-ro", "/dev",
            "--remount-ro", "/",
            "--chdir", "/tmp",
            "--clearenv",
            "--setenv", "PYTHONPATH", f"{GUEST_PKG_ROOT}:{GUEST_SITE}",
            "--setenv", "HOME", "/tmp",
            "--setenv", "PATH", "/usr/bin:/bin",
            "--setenv", "LANG", "C.UTF-8",
            "--",
            self.python, *guest_args,
        ]
        return Launch(argv, {}, kwargs)

    def guest_paths(self, run_dir: Path) -> tuple[str, str]:
        """(run dir, callback socket) as the guest sees them."""
        if "namespaces" in self.layers:
            return GUEST_RUN_DIR, GUEST_SOCKET
        return str(run_dir), str(self.callback_socket)

    def probe(self) -> None:
        """Starts one sandboxed interpreter to prove the layers work on this host."""
        probe_dir = self.runtime_dir / "probe"
        probe_dir.mkdir(mode=0o755, exist_ok=True)
        launch = self.launch(probe_dir, 0, self.next_uid())
        # Replace the guest entry point with an import check.
        argv = [
            *launch.argv[: launch.argv.index("-m")],
            "-c", "import grpc, rlm_service.repl_guest.protocol, os; print(os.getuid())",
        ]
        kwargs = {k: v for k, v in launch.popen_kwargs.items() if k != "pass_fds"}
        try:
            r = subprocess.run(argv, env=launch.env, capture_output=True, text=True,
                               timeout=30, check=False, **kwargs)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"sandbox probe failed to start: {exc}") from exc
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)
        if r.returncode != 0:
            raise SandboxUnavailable(
                f"sandbox probe failed (exit {r.returncode}): {r.stderr.strip()[-500:]}"
            )
        log.info("sandbox ready", extra={"sandbox_layers": list(self.layers),
                                          "sandbox_python": self.python})

