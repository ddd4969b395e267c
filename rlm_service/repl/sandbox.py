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
* ``no-new-privs`` and ``die-with-parent`` (set by bubblewrap);
* ``seccomp``: a syscall filter (see ``seccomp.py``) loaded by bubblewrap;
* ``cgroups``: memory and pids cgroups per REPL (see ``cgroup.py``), where the service
  may create them; optional, so a host without them only logs a warning.

A layer the host cannot provide is refused at start-up unless
``SANDBOX_ALLOW_MISSING`` names it; the active layers are logged and reported.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlm_service.config import Settings
from rlm_service.repl.bwrap import Bind, sandbox_argv, stage_argv
from rlm_service.repl.cgroup import CgroupsUnavailable, CgroupTree, ReplCgroups
from rlm_service.repl.host_files import (
    GUEST_PACKAGE_PARTS,
    PACKAGE_DIR,
    SandboxUnavailable,
    check_readable,
    folders_open,
    pick_python,
    precompile_guest,
    site_dir,
)
from rlm_service.repl.seccomp import SeccompUnavailable, build_program, program_fd
from rlm_service.repl.tools_mount import TOOLS_BROKEN, probe_code, tools_args, tools_bind
from rlm_service.tools import SandboxModule, ToolConfigError

log = logging.getLogger(__name__)

ALL_LAYERS = ("uid", "namespaces", "readonly-fs", "tmpfs", "rlimits", "no-new-privs",
              "seccomp", "cgroups")
# A weaker layer that fills a missing one's place without SANDBOX_ALLOW_MISSING.
STAND_INS = {"uid": "userns-uid"}
# Used where the host allows, else logged as missing: most containers and non-root users
# cannot create cgroups, and rlimits still bound each process there.
OPTIONAL_LAYERS = ("cgroups",)
GUEST_RUN_DIR = "/rlm/run"
# A REPL reaches the callback through a socket of its own in its run dir, which the
# host relays to the shared server (repl/proxy.py); the shared one is not mounted.
CALLBACK_SOCKET_NAME = "callback.sock"
GUEST_PKG_ROOT = "/opt/rlm/pkg"
GUEST_SITE = "/opt/rlm/site"
GUEST_ENTRY = "from rlm_service.repl_guest.main import main; main()"


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] | None
    popen_kwargs: dict[str, Any] = field(default_factory=dict)
    # The parent's copies of fds handed to the child; closed once it has started.
    parent_fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        """Releases the parent's copies of the launch's fds (idempotent)."""
        while self.parent_fds:
            os.close(self.parent_fds.pop())


class Sandbox:
    """Builds REPL launch commands; one per service process."""

    def __init__(self, settings: Settings, runtime_dir: Path, callback_socket: Path,
                 tools: SandboxModule | None = None) -> None:
        self.settings = settings
        self.tools = tools
        self.runtime_dir = runtime_dir
        self.callback_socket = callback_socket
        allowed = {x.strip() for x in settings.sandbox_allow_missing.split(",") if x.strip()}
        self._allow_all = "all" in allowed
        self._allowed = set(ALL_LAYERS) if self._allow_all else allowed
        self._uids = itertools.count()
        self.bwrap = shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")
        self.is_root = os.geteuid() == 0
        self.python = pick_python(settings.sandbox_python, self.is_root)
        self.site = site_dir()
        precompile_guest()
        self.seccomp_program: bytes | None = None
        self.seccomp_error = ""
        if self.bwrap:
            try:
                self.seccomp_program = build_program()
            except SeccompUnavailable as exc:
                self.seccomp_error = str(exc)
        self.cgroups: ReplCgroups | None = None
        try:
            self.cgroups = ReplCgroups(CgroupTree(settings.sandbox_memory_mb * 1024 * 1024,
                                                  settings.sandbox_max_processes))
        except CgroupsUnavailable as exc:
            # Expected without root: rlimits still bound each process.
            log.log(logging.WARNING if self.is_root else logging.INFO,
                    "sandbox: no per-REPL cgroups (%s)", exc)
        self.layers = self._plan_layers()
        # Root, with something under a folder the run's uid cannot walk (a 0700 home,
        # /root): a root bubblewrap mounts it first. Only then, since that stage needs
        # CAP_SYS_ADMIN, which root in a container usually lacks.
        self.staged = "uid" in self.layers and "readonly-fs" in self.layers and not all(
            folders_open(b.source) for b in self._binds(runtime_dir / "runs" / "any"))

    # --- planning ---------------------------------------------------------------
    def _plan_layers(self) -> tuple[str, ...]:
        active: list[str] = []
        if self.bwrap:
            active += ["namespaces", "readonly-fs", "tmpfs", "no-new-privs"]
            if self.seccomp_program is not None:
                active.append("seccomp")
        if self.is_root and self.setpriv:
            active.append("uid")
        elif self.bwrap and not self.is_root:
            active.append("userns-uid")
        active.append("rlimits")
        if self.cgroups is not None:
            active.append("cgroups")
        missing = [x for x in ALL_LAYERS if x not in active and STAND_INS.get(x) not in active
                   and x not in OPTIONAL_LAYERS]
        refused = [x for x in missing if x not in self._allowed]
        if refused:
            reasons = {
                "uid": "the service is root but setpriv is missing, so it cannot run REPLs "
                       "under another uid" if self.is_root else
                       "the service is not root and bubblewrap is missing",
                "namespaces": "bubblewrap (bwrap) is not installed",
                "seccomp": self.seccomp_error or "bubblewrap (bwrap) is not installed",
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
        check_readable(Path(self.python), self.site, self.is_root, active,
                       self.tools.source if self.tools else None)
        return tuple(active)

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
        return [*binds, *tools_bind(self.tools), Bind(run_dir, GUEST_RUN_DIR)]

    def launch(self, run_dir: Path, ctrl_fd: int, uid: int) -> Launch:
        guest_args = [
            # -S: no site module; everything the guest imports is on PYTHONPATH.
            # -c, not -m: runpy and importlib.util would cost every REPL 5 ms.
            "-s", "-S", "-B", "-c", GUEST_ENTRY,
            "--ctrl-fd", str(ctrl_fd),
            "--limits", json.dumps(self.guest_limits()),
            "--max-output", str(self.settings.max_output_chars),
            *tools_args(self.tools, "namespaces" in self.layers),
        ]
        kwargs: dict[str, Any] = {"pass_fds": (ctrl_fd,), "start_new_session": True}
        join = [] if self.cgroups is None else self.cgroups.join_argv(run_dir.name)
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
            return Launch([*join, *drop, self.python, *guest_args], env,
                          {**kwargs, "cwd": run_dir})
        tmp_bytes = self.settings.sandbox_tmp_mb * 1024 * 1024
        binds = self._binds(run_dir)
        parent_fds: list[int] = []
        if "seccomp" in self.layers and self.seccomp_program is not None:
            parent_fds.append(program_fd(self.seccomp_program))
            kwargs["pass_fds"] = (ctrl_fd, *parent_fds)
        seccomp_fd = parent_fds[0] if parent_fds else None
        if drop and self.staged:
            staged = [Bind(Path(b.dest), b.dest, b.writable) for b in binds]
            argv = [*stage_argv(self.bwrap, binds), *drop,
                    *sandbox_argv(self.bwrap, staged, tmp_bytes, None, seccomp_fd)]
        else:
            argv = [*drop, *sandbox_argv(self.bwrap, binds, tmp_bytes,
                                         uid if "userns-uid" in self.layers else None,
                                         seccomp_fd)]
        argv += ["--setenv", "PYTHONPATH", f"{GUEST_PKG_ROOT}:{GUEST_SITE}",
                 "--", self.python, *guest_args]
        return Launch([*join, *argv], {}, kwargs, parent_fds)

    # --- cgroups --------------------------------------------------------------------
    def release(self, run_dir: Path) -> None:
        """Kills whatever of the REPL in ``run_dir`` is still alive, after its process
        exited, and drops its cgroups."""
        if self.cgroups is not None:
            self.cgroups.release(run_dir.name)

    def reap(self) -> int:
        """Kills processes of closed REPLs that are still alive; returns how many."""
        return 0 if self.cgroups is None else self.cgroups.reap()

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.close()

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
        # Replace the guest entry point with an import check (the tools module's too).
        argv = [
            *launch.argv[: launch.argv.index(GUEST_ENTRY) - 1],
            "-c", "import grpc, rlm_service.repl_guest.protocol, os; print(os.getuid())"
            + probe_code(self.tools, "namespaces" in self.layers),
        ]
        kwargs = {**launch.popen_kwargs,
                  "pass_fds": [fd for fd in launch.popen_kwargs["pass_fds"] if fd != 0]}
        try:
            r = subprocess.run(argv, env=launch.env, capture_output=True, text=True,
                               timeout=30, check=False, **kwargs)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"sandbox probe failed to start: {exc}") from exc
        finally:
            launch.close()
            self.release(probe_dir)
            shutil.rmtree(probe_dir, ignore_errors=True)
        if r.returncode == TOOLS_BROKEN and self.tools is not None:
            raise ToolConfigError(f"TOOLS_MODULE {self.tools.source} does not work in the "
                                  f"sandbox: {r.stderr.strip()[-1500:]}")
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

