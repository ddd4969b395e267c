"""How a REPL process is isolated: bubblewrap plus a uid of its own.

Why bubblewrap: it is a small, maintained, setuid-free tool (used by Flatpak)
that builds a sandbox from kernel namespaces in one exec, packaged by Debian.
Each REPL gets:

* ``uid``: a host uid/gid of its own from a range no real user has, so it cannot
  signal, trace or read the service or other runs (needs the service to be root);
  without root, ``userns-uid`` stands in: a uid of its own inside a private user
  namespace, which the host still counts as the service's uid (see docs/security.md);
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
from rlm_service.repl.bwrap import Bind, sandbox_argv, stage_argv

log = logging.getLogger(__name__)

ALL_LAYERS = ("uid", "namespaces", "readonly-fs", "tmpfs", "rlimits", "no-new-privs")
# A weaker layer that fills a missing one's place without SANDBOX_ALLOW_MISSING.
STAND_INS = {"uid": "userns-uid"}
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# The parts of the package the in-sandbox REPL imports (see repl_guest/main.py).
GUEST_PACKAGE_PARTS = ("__init__.py", "repl_guest", "_gen")
GUEST_RUN_DIR = "/rlm/run"
# A REPL reaches the callback through a socket of its own in its run dir, which the
# host relays to the shared server (repl/proxy.py); the shared one is not mounted.
CALLBACK_SOCKET_NAME = "callback.sock"
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


def _folders_open(path: Path) -> bool:
    """Whether a uid with no special rights can walk the folders down to ``path``."""
    try:
        return all(os.stat(p).st_mode & stat.S_IXOTH for p in path.resolve().parents)
    except OSError:
        return False


def _others_may(path: Path, bits: int) -> bool:
    """Whether a uid with no special rights has ``bits`` on ``path`` itself (the
    folders above it do not matter once it is mounted into the sandbox)."""
    try:
        return os.stat(path).st_mode & bits == bits
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
        # Root, with something under a folder the run's uid cannot walk (a 0700 home,
        # /root): a root bubblewrap mounts it first. Only then, since that stage needs
        # CAP_SYS_ADMIN, which root in a container usually lacks.
        self.staged = "uid" in self.layers and "readonly-fs" in self.layers and not all(
            _folders_open(b.source) for b in self._binds(runtime_dir / "runs" / "any"))

    # --- planning ---------------------------------------------------------------
    def _pick_python(self) -> str:
        if self.settings.sandbox_python:
            return self.settings.sandbox_python
        want = f"python{sys.version_info.major}.{sys.version_info.minor}"
        found = [c for c in (os.path.realpath(sys.executable), f"/usr/local/bin/{want}",
                             f"/usr/bin/{want}") if os.path.exists(c)]
        if self.is_root:
            # Any interpreter the sandbox uid may execute reaches the sandbox; one under
            # /usr adds nothing to its root, where /root/.pyenv would show up, say.
            found = [c for c in found if _others_may(Path(c).resolve(), stat.S_IXOTH)]
            found.sort(key=lambda c: not Path(c).resolve().is_relative_to("/usr"))
        return found[0] if found else os.path.realpath(sys.executable)

    def _plan_layers(self) -> tuple[str, ...]:
        active: list[str] = []
        if self.bwrap:
            active += ["namespaces", "readonly-fs", "tmpfs", "no-new-privs"]
        if self.is_root and self.setpriv:
            active.append("uid")
        elif self.bwrap and not self.is_root:
            active.append("userns-uid")
        active.append("rlimits")
        missing = [x for x in ALL_LAYERS if x not in active and STAND_INS.get(x) not in active]
        refused = [x for x in missing if x not in self._allowed]
        if refused:
            reasons = {
                "uid": "the service is root but setpriv is missing, so it cannot run REPLs "
                       "under another uid" if self.is_root else
                       "the service is not root and bubblewrap is missing",
                "namespaces": "bubblewrap (bwrap) is not installed",
            }
            why = "; ".join(reasons.get(x, f"{x} unavailable") for x in refused)
            raise SandboxUnavailable(
                f"sandbox layers missing: {', '.join(refused)} ({why}). Install bubblewrap "
                "(and util-linux for setpriv), or set SANDBOX_ALLOW_MISSING to the layers "
                "you accept losing (weaker isolation)."
            )
        if missing:
            log.warning("sandbox running WITHOUT layers %s", ", ".join(missing),
                        extra={"sandbox_layers": active, "sandbox_missing": missing})
        if "userns-uid" in active:
            log.warning("sandbox: the service is not root, so REPLs get a uid of their own "
                        "only inside their user namespace (userns-uid instead of uid); "
                        "run as root for a host uid per REPL",
                        extra={"sandbox_layers": active})
        self._check_readable(active)
        return tuple(active)

    def _check_readable(self, active: list[str]) -> None:
        if not self.is_root or "uid" not in active:
            return
        if "readonly-fs" in active:
            # Mounted into the sandbox: only the trees' own permissions count.
            need = [(Path(self.python).resolve(), stat.S_IXOTH),
                    (self.site, stat.S_IROTH | stat.S_IXOTH),
                    *((PACKAGE_DIR / part,
                       stat.S_IROTH | (stat.S_IXOTH if (PACKAGE_DIR / part).is_dir() else 0))
                      for part in GUEST_PACKAGE_PARTS)]
            for p, bits in need:
                if not _others_may(p, bits):
                    raise SandboxUnavailable(
                        f"{p} is not readable by the sandbox uid (mode "
                        f"{oct(os.stat(p).st_mode & 0o777) if p.exists() else 'missing'}); "
                        "make it readable by others or set SANDBOX_PYTHON")
            return
        # Without bubblewrap the REPL reaches the files through their host paths.
        for p in (Path(self.python), self.site, PACKAGE_DIR):
            if not _world_accessible(p):
                raise SandboxUnavailable(
                    f"{p} is not readable by the sandbox uid; set SANDBOX_PYTHON to a "
                    "world-readable interpreter or install the service outside /root"
                )

    def next_uid(self) -> int:
        return self.settings.sandbox_uid_base + next(self._uids) % self.settings.sandbox_uid_count

    # --- launch -------------------------------------------------------------------
    def guest_limits(self) -> dict[str, int]:
        s = self.settings
        return {
            "as_bytes": s.sandbox_memory_mb * 1024 * 1024,
            "cpu_seconds": s.sandbox_cpu_seconds,
            # RLIMIT_NPROC counts per uid within a user namespace: meaningful when each
            # run has a uid of its own, on the host or in its namespace.
            "processes": s.sandbox_max_processes
            if {"uid", "userns-uid"} & set(self.layers) else 0,
            "open_files": s.sandbox_max_open_files,
            "file_bytes": s.sandbox_max_file_mb * 1024 * 1024,
        }

    def _binds(self, run_dir: Path) -> list[Bind]:
        binds = []
        prefix = Path(self.python).resolve().parent.parent
        if not prefix.is_relative_to("/usr"):
            # Same path: the interpreter finds its libraries by absolute paths.
            binds.append(Bind(prefix, str(prefix)))
        binds.append(Bind(self.site, GUEST_SITE))
        # Only what the guest imports: model code finds no config, server or
        # backend modules to poke at.
        binds += [Bind(PACKAGE_DIR / part, f"{GUEST_PKG_ROOT}/{PACKAGE_DIR.name}/{part}")
                  for part in GUEST_PACKAGE_PARTS]
        return [*binds, Bind(run_dir, GUEST_RUN_DIR)]

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
        drop = ([self.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--inh-caps=-all", "--"]
                if "uid" in self.layers and self.setpriv else [])
        if "namespaces" not in self.layers or self.bwrap is None:
            env = {
                "PYTHONPATH": f"{PACKAGE_DIR.parent}{os.pathsep}{self.site}",
                "HOME": str(run_dir),
                "PATH": "/usr/bin:/bin",
                "LANG": "C.UTF-8",
            }
            return Launch([*drop, self.python, *guest_args], env, {**kwargs, "cwd": run_dir})
        tmp_bytes = self.settings.sandbox_tmp_mb * 1024 * 1024
        binds = self._binds(run_dir)
        if drop and self.staged:
            staged = [Bind(Path(b.dest), b.dest, b.writable) for b in binds]
            argv = [*stage_argv(self.bwrap, binds), *drop,
                    *sandbox_argv(self.bwrap, staged, tmp_bytes, None)]
        else:
            argv = [*drop, *sandbox_argv(self.bwrap, binds, tmp_bytes,
                                         uid if "userns-uid" in self.layers else None)]
        argv += ["--setenv", "PYTHONPATH", f"{GUEST_PKG_ROOT}:{GUEST_SITE}",
                 "--", self.python, *guest_args]
        return Launch(argv, {}, kwargs)

    def guest_paths(self, run_dir: Path) -> tuple[str, str]:
        """(run dir, callback socket) as the guest sees them."""
        if "namespaces" in self.layers:
            return GUEST_RUN_DIR, f"{GUEST_RUN_DIR}/{CALLBACK_SOCKET_NAME}"
        return str(run_dir), str(run_dir / CALLBACK_SOCKET_NAME)

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
                + (" (the venv, the package or the interpreter is under a folder the sandbox "
                   "uid cannot enter, so a root bubblewrap mounts them first, which needs "
                   "CAP_SYS_ADMIN; or install them under world-readable folders)"
                   if self.staged else "")
            )
        log.info("sandbox ready", extra={"sandbox_layers": list(self.layers),
                                          "sandbox_python": self.python,
                                          "sandbox_staged": self.staged})

