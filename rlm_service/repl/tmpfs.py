"""The inode cap of a sandbox's private /tmp and /dev/shm.

bubblewrap's ``--size`` caps a tmpfs's bytes, but it has no ``nr_inodes`` option,
and empty files use no bytes: 330,001 of them pinned 411 MB of kernel memory.
Mounting a capped tmpfs from inside the sandbox needs a capability the REPL must
not hold, so the host watches instead: it reads the file count of the sandbox's
tmpfs mounts (``statvfs`` through ``/proc/<pid>/root``, which model code cannot
hide) while a block runs, and replaces a REPL that goes over the cap. That frees
the mounts, and with them the kernel memory.
"""

from __future__ import annotations

import os

MOUNTS = ("tmp", "dev/shm")


def _leaf(pid: int) -> int:
    """The deepest first descendant of ``pid``: the guest inside bwrap's namespaces."""
    for _ in range(8):
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = f.read().split()
        except OSError:
            break
        if not children:
            break
        pid = int(children[0])
    return pid


def files_in_tmp(pid: int) -> int | None:
    """Files and folders in the sandbox's /tmp and /dev/shm, or None if unreadable."""
    leaf = _leaf(pid)
    if leaf == pid:
        return None  # no sandbox namespace (yet, or at all)
    used = 0
    for mount in MOUNTS:
        try:
            st = os.statvfs(f"/proc/{leaf}/root/{mount}")
        except OSError:
            return None
        used += max(0, st.f_files - st.f_ffree - 1)  # the mount's own root
    return used
