"""The bubblewrap command lines of a REPL launch.

As root a REPL runs under a host uid of its own, and that uid cannot walk into a 0700
home or ``/root``, where the venv, the package or the interpreter often live. Then a root
launch has two stages: a root bwrap (``stage_argv``) mounts each of them at a fixed path
in a fresh root whose parent folders it creates world-searchable, ``setpriv`` drops to
the run's uid, and the sandbox bwrap (``sandbox_argv``) binds those fixed paths. The
host folders' permissions no longer matter; only the mounted trees' own do.

Without root there is no second host uid: the sandbox bwrap binds the host paths directly
(the service's uid can read them) and maps the run's uid in a user namespace of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Bind:
    source: Path
    dest: str
    writable: bool = False

    def argv(self) -> list[str]:
        return ["--bind" if self.writable else "--ro-bind", str(self.source), self.dest]


def _system_dirs() -> list[str]:
    argv = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "lib32", "sbin"):
        p = Path("/") / name
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            argv += ["--ro-bind", str(p), str(p)]
    return argv


def stage_argv(bwrap: str, binds: list[Bind]) -> list[str]:
    """The root stage: ``binds`` at their destinations, then the command after ``--``."""
    parents = {str(p) for b in binds for p in PurePosixPath(b.dest).parents}
    argv = [
        bwrap, "--die-with-parent",
        # Only what setpriv needs to drop to the run's uid; it clears these too.
        "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
        *_system_dirs(),
        # The sandbox bwrap mounts a fresh /proc, which the kernel allows only where a
        # complete one is visible; it also builds its own root on /tmp.
        "--bind", "/proc", "/proc", "--dev", "/dev", "--perms", "0755", "--dir", "/tmp",
    ]
    for d in sorted(parents - {"/", "/tmp"}):
        if not PurePosixPath(d).is_relative_to("/usr"):
            # bwrap's own default for the folders it creates is 0700 when run as root.
            argv += ["--perms", "0755", "--dir", d]
    for b in binds:
        argv += b.argv()
    return [*argv, "--remount-ro", "/", "--"]


def sandbox_argv(bwrap: str, binds: list[Bind], tmp_bytes: int, userns_uid: int | None,
                 seccomp_fd: int | None = None) -> list[str]:
    """The sandbox itself, up to the ``--`` before the interpreter.

    ``userns_uid``: the uid (and gid) the REPL gets inside its user namespace, for a
    service that is not root; None keeps the uid bwrap runs under (setpriv's).
    ``seccomp_fd``: an fd holding the syscall filter, applied just before the exec.
    """
    # --disable-userns: no nested user namespace (a fresh "root" with mount rights
    # inside); it needs an explicit --unshare-user.
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns",
            "--die-with-parent", "--new-session"]
    if userns_uid is not None:
        argv += ["--uid", str(userns_uid), "--gid", str(userns_uid)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += [
        *_system_dirs(),
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(tmp_bytes), "--tmpfs", "/tmp",
        "--size", str(tmp_bytes), "--tmpfs", "/dev/shm",
    ]
    for b in binds:
        argv += b.argv()
    return [
        *argv,
        # bwrap's own root and /dev are tmpfs with no size cap, writable by the
        # sandbox uid: read-only, so /tmp and /dev/shm (capped) are the only space.
        "--remount-ro", "/dev",
        "--remount-ro", "/",
        "--chdir", "/tmp",
        "--clearenv",
        "--setenv", "HOME", "/tmp",
        "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "LANG", "C.UTF-8",
    ]
