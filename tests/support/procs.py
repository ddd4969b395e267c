"""The one process scanner: sandbox pids, process trees and leak checks, read from /proc."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

GUEST_MARK = b"rlm_service.repl_guest"


def cmdlines() -> dict[int, bytes]:
    """``{pid: raw cmdline}`` of every process this uid can see."""
    out: dict[int, bytes] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    out[int(entry)] = f.read()
            except OSError:
                continue
    return out


def guest_pids(under: Path | None = None) -> set[int]:
    """Sandboxed REPL processes (bwrap and the guest) on the machine; with ``under``,
    only those whose command line names a path below it (other test sessions on the
    same machine run their own sandboxes)."""
    mark = str(under).encode() if under is not None else b""
    return {pid for pid, cmd in cmdlines().items() if GUEST_MARK in cmd and mark in cmd}


def sandbox_pids() -> set[int]:
    """Host pids of every sandboxed REPL (bwrap and its children) on this machine."""
    return guest_pids()


def state(pid: int) -> str | None:
    """The process state letter (``R``, ``S``, ``Z``, ...), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_alive(pid: int) -> bool:
    """Exists and is not a zombie. Killed sandbox processes are reparented to the
    machine's init, which may reap them only later."""
    return state(pid) not in (None, "Z", "X")


def alive(pids: Iterable[int]) -> set[int]:
    """The pids of ``pids`` still running (zombies count as gone)."""
    return {pid for pid in pids if is_alive(pid)}


def process_tree(root: int) -> set[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            tree.add(pid)
            todo.extend(children.get(pid, []))
    return tree


def trees(roots: Iterable[int]) -> set[int]:
    """The live process trees of every pid in ``roots``."""
    out: set[int] = set()
    for pid in roots:
        out |= process_tree(pid)
    return out


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """``predicate()``'s first truthy value, or AssertionError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


def assert_gone(pids: Iterable[int], timeout: float = 5.0) -> None:
    """Leak check: every pid of ``pids`` exits (or is a zombie) within ``timeout``."""
    pids = set(pids)
    end = time.monotonic() + timeout
    while (left := alive(pids)) and time.monotonic() < end:
        time.sleep(0.02)
    assert not left, f"still running after {timeout} s: {sorted(left)}"


async def settled(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate()`` holds within ``timeout`` seconds; polls without blocking
    the event loop, so a server in this process keeps tearing things down meanwhile."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())
