"""The sandbox's syscall filter: a seccomp BPF program that bubblewrap loads (``--seccomp``).

Namespaces and a uid of its own stop the REPL from reaching the service; this filter
removes the kernel surface that model code has no use for and that has a history of
escapes or of side channels: tracing other processes (the sandbox's own PID 1 included,
which could otherwise be made to drop its parent-death signal), io_uring, userfaultfd,
bpf, perf events, the keyrings, new namespaces and mounts, kexec and modules, and every
socket family but AF_UNIX (the callback socket). Refused calls fail with EPERM (or
EAFNOSUPPORT / ENOSYS where programs expect that), so Python raises a clear OSError
instead of the process being killed.

The program is built once per service with libseccomp (through ``pyseccomp``, a ctypes
binding, so no compiler is needed) and handed to each bwrap as a memfd of its own.
"""

from __future__ import annotations

import errno
import os
import socket

# Each with EPERM. Names libseccomp does not know on this architecture are skipped.
DENIED_SYSCALLS = (
    # tracing and reading other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # kernel attack surface model code never needs
    "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "bpf",
    "perf_event_open", "add_key", "request_key", "keyctl",
    # namespaces, mounts and the machine itself
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "open_by_handle_at", "name_to_handle_at", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff",
    "acct", "quotactl", "syslog", "lookup_dcookie", "personality", "uselib",
)
_NAMESPACE_FLAGS = (0x00020000,  # CLONE_NEWNS
                    0x02000000,  # CLONE_NEWCGROUP
                    0x04000000,  # CLONE_NEWUTS
                    0x08000000,  # CLONE_NEWIPC
                    0x10000000,  # CLONE_NEWUSER
                    0x20000000,  # CLONE_NEWPID
                    0x40000000,  # CLONE_NEWNET
                    0x00000080)  # CLONE_NEWTIME
_TIOCSTI = 0x5412  # pushes characters into a terminal's input


class SeccompUnavailable(RuntimeError):
    """libseccomp (or its Python binding) is not on this host."""


def build_program() -> bytes:
    """The BPF program, as bwrap's ``--seccomp`` reads it."""
    try:
        import pyseccomp as sc  # type: ignore[import-untyped]
    except (ImportError, OSError) as exc:  # the binding loads libseccomp.so.2 at import
        raise SeccompUnavailable(f"libseccomp is not available: {exc}") from exc
    f = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except (ValueError, OSError, RuntimeError):
            continue  # not a syscall on this architecture
    for family_call in ("socket", "socketpair"):
        f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), family_call,
                   sc.Arg(0, sc.NE, socket.AF_UNIX))
    for flag in _NAMESPACE_FLAGS:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory, where a filter cannot look: ENOSYS makes glibc
    # fall back to clone, whose flags the rules above do see.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
    fd = os.memfd_create("rlm-seccomp")
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            f.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def program_fd(program: bytes) -> int:
    """A fresh read-only fd holding ``program`` at offset 0, for one bwrap to read.

    One per launch: bwrap reads to the end, and fds shared between concurrent launches
    would share that offset.
    """
    fd = os.memfd_create("rlm-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd
    except OSError:
        os.close(fd)
        raise
