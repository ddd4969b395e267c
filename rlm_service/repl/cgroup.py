"""Per-REPL memory and pids cgroups, where the service may create them.

``RLIMIT_AS`` bounds each process, so one run could hold processes times the memory limit;
a cgroup bounds the REPL as a whole (``SANDBOX_MEMORY_MB`` for all its processes,
``SANDBOX_MAX_PROCESSES`` tasks). It is also the one list of a REPL's processes that
model code cannot leave: closing a REPL kills everything in its cgroups, so nothing
outlives the run whatever it did to its parents.

cgroup v2 (one unified tree) and v1 (a tree per controller, as on many CI hosts) are
both handled. Each service (a ``Sandbox``) creates ``rlm-<pid>-<token>`` under its own
cgroup (several may share a process, as in tests) and one
``repl-<token>`` per REPL below it. A REPL joins its cgroups before anything of it
runs: a root ``sh`` writes its own pid into ``cgroup.procs`` and then execs the launch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids")
log = logging.getLogger(__name__)


class CgroupsUnavailable(RuntimeError):
    """The service cannot create cgroups for its REPLs here."""


def _own_path(controller: str | None) -> str:
    """This process's cgroup path in the v1 ``controller`` tree, or in the v2 tree."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            if (controller is None and names == "") or controller in names.split(","):
                return path
    raise CgroupsUnavailable(f"no {controller or 'unified'} cgroup in /proc/self/cgroup")


def _is_v2(path: Path) -> bool:
    return (path / "cgroup.controllers").exists()


@dataclass(frozen=True)
class ReplCgroup:
    """The cgroups of one REPL (one directory on v2, one per controller on v1)."""

    dirs: tuple[Path, ...]

    def join_argv(self, sh: str) -> list[str]:
        """A prefix for the launch argv that moves the process into these cgroups first."""
        script = "".join(f'echo $$ > "{d}/cgroup.procs" && ' for d in self.dirs)
        return [sh, "-c", script + 'exec "$@"', "rlm-cgroup-join"]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
        return found

    def kill(self, seconds: float = 5.0) -> set[int]:
        """SIGKILLs every process until none is left; returns the pids still there."""
        for d in self.dirs:
            with contextlib.suppress(OSError):
                (d / "cgroup.kill").write_text("1")  # v2: atomic, races no fork
        deadline = time.monotonic() + seconds
        while (left := self.pids()) and time.monotonic() < deadline:
            # pids.max bounds how many a fork loop can add between two passes.
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        return self.pids()

    def remove(self) -> set[int]:
        """Kills what is left and removes the cgroups; returns pids that would not die."""
        left = self.kill()
        for d in self.dirs:
            _rmdir_settled(d)
        return left


def _rmdir_settled(path: Path) -> bool:
    """Removes a cgroup folder, waiting up to 1 s for the kernel to finish the exits of
    its processes or the removal of its children; False if it is still there."""
    for _ in range(100):
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(0.01)
    return False


class CgroupTree:
    """The service's parent cgroup(s) for its REPLs."""

    def __init__(self, memory_bytes: int, max_pids: int, root: Path = ROOT) -> None:
        self.memory_bytes = memory_bytes
        self.max_pids = max_pids
        sh = shutil.which("sh")
        if sh is None:
            raise CgroupsUnavailable("no sh to join a cgroup before exec")
        self.sh = sh
        name = f"rlm-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            if _is_v2(root):
                base = root / _own_path(None).lstrip("/") / name
                base.mkdir(exist_ok=True)
                # Fails (EBUSY) when the service's cgroup also holds processes and is not
                # the root: the kernel's no-internal-processes rule.
                (base / "cgroup.subtree_control").write_text("+memory +pids")
                self.bases: tuple[Path, ...] = (base,)
                self.v2 = True
            else:
                bases = []
                for c in CONTROLLERS:
                    base = root / c / _own_path(c).lstrip("/") / name
                    base.mkdir(exist_ok=True)
                    bases.append(base)
                self.bases = tuple(bases)
                self.v2 = False
        except OSError as exc:
            raise CgroupsUnavailable(f"cannot create cgroups under {root}: {exc}") from exc
        self._remove_dead_services()

    def _remove_dead_services(self) -> None:
        """Empties and removes what a service that died without closing left behind."""
        for base in self.bases:
            for other in base.parent.glob("rlm-*-*"):
                pid = other.name.split("-")[1]
                if other != base and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    for group in other.glob("repl-*"):
                        ReplCgroup((group,)).remove()
                    with contextlib.suppress(OSError):
                        other.rmdir()

    def create(self, token: str) -> ReplCgroup:
        dirs = tuple(base / f"repl-{token}" for base in self.bases)
        try:
            for d in dirs:
                d.mkdir()
            if self.v2:
                (dirs[0] / "memory.max").write_text(str(self.memory_bytes))
                if (dirs[0] / "memory.swap.max").exists():
                    (dirs[0] / "memory.swap.max").write_text("0")
                (dirs[0] / "pids.max").write_text(str(self.max_pids))
            else:
                mem, pids = dirs
                (mem / "memory.limit_in_bytes").write_text(str(self.memory_bytes))
                with contextlib.suppress(OSError):  # only with swap accounting on
                    (mem / "memory.memsw.limit_in_bytes").write_text(str(self.memory_bytes))
                (pids / "pids.max").write_text(str(self.max_pids))
        except OSError as exc:
            ReplCgroup(dirs).remove()
            raise CgroupsUnavailable(f"cannot set up a REPL cgroup: {exc}") from exc
        return ReplCgroup(dirs)

    def leftovers(self, live: set[str]) -> list[ReplCgroup]:
        """REPL cgroups under the service's bases whose token is not in ``live``."""
        tokens = {p.name.removeprefix("repl-") for base in self.bases
                  for p in base.glob("repl-*")} - live
        return [ReplCgroup(tuple(base / f"repl-{t}" for base in self.bases))
                for t in sorted(tokens)]

    def close(self) -> None:
        """Removes the service's parent cgroups (ReplCgroups.close empties them first)."""
        for base in self.bases:
            if not _rmdir_settled(base):
                log.warning("could not remove the service cgroup", extra={"path": str(base)})


class ReplCgroups:
    """Which REPL owns which cgroups: join at launch, release at close, reap leftovers."""

    def __init__(self, tree: CgroupTree) -> None:
        self.tree = tree
        self._live: dict[str, ReplCgroup] = {}
        self._releasing: set[str] = set()  # release() runs in worker threads

    def join_argv(self, token: str) -> list[str]:
        group = self.tree.create(token)
        self._live[token] = group
        return group.join_argv(self.tree.sh)

    def release(self, token: str) -> None:
        self._releasing.add(token)
        try:
            group = self._live.pop(token, None)
            if group is not None and (left := group.remove()):
                log.error("sandbox processes would not die", extra={"pids": sorted(left)})
        finally:
            self._releasing.discard(token)

    def reap(self) -> int:
        """Kills the processes of REPL cgroups that no live REPL owns; returns how many.

        Closing a REPL empties its cgroups, so anything found here escaped that."""
        escaped = 0
        for group in self.tree.leftovers({*self._live, *self._releasing}):
            if pids := group.pids():
                escaped += len(pids)
                log.error("sandbox processes outlived their REPL; killed",
                          extra={"pids": sorted(pids)})
            group.remove()
        return escaped

    def close(self) -> None:
        for token in list(self._live):
            self.release(token)
        self.reap()
        self.tree.close()
