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

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from rlm_service.repl.control import ReplError

T = TypeVar("T")
MOUNTS = ("tmp", "dev/shm")
# How often the host looks at the file count while a block runs.
CHECK_SECONDS = 0.25


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


async def capped(work: Coroutine[Any, Any, T], pid: int | None, cap: int) -> T:
    """``work`` (a block), while the sandbox of ``pid`` stays under ``cap`` files;
    ReplError past it. ``pid`` None: nothing to watch."""
    task: asyncio.Task[T] = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CHECK_SECONDS)
            # Checked at the end too: short blocks add up, and so do background
            # processes between blocks.
            files = files_in_tmp(pid) if pid is not None else None
            if files is not None and files > cap:
                raise ReplError(
                    f"the sandbox's /tmp and /dev/shm hold {files:,} files and folders, over "
                    f"the limit of {cap:,}; the REPL process was killed. Keep fewer files.")
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()
            # wait(), not await task: the block's own end is no error of ours, while a
            # cancel of this task must still get through.
            await asyncio.wait({task})
