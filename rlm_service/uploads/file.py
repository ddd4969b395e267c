"""One stored context as a run uses it: an open file, never its text in memory.

The service holds only the descriptor and a few facts about the text; the REPL's
guest reads the text from its run directory, where ``place`` puts it (a hard link
when it can, a kernel-side copy otherwise)."""

from __future__ import annotations

import contextlib
import errno
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(eq=False)
class ContextFile:
    ref: str
    path: Path
    fd: int
    size_bytes: int
    chars: int
    preview: str  # the first characters, for the root model's description
    _closer: weakref.finalize = field(init=False, repr=False)  # type: ignore[type-arg]

    def __post_init__(self) -> None:
        # The descriptor keeps the text readable after the ref expires and its file is
        # removed; it is closed when the request ends, or at the latest with this object.
        self._closer = weakref.finalize(self, _close_quietly, self.fd)

    @classmethod
    def open(cls, ref: str, path: Path, chars: int, preview: str) -> ContextFile:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return cls(ref, path, fd, os.fstat(fd).st_size, chars, preview)

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def place(self, dest: Path) -> None:
        """Makes the text readable at ``dest`` (mode 0644, a new name)."""
        if self.closed:
            raise ValueError(f"context {self.ref} is closed")
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.link(self.path, dest)
                return
        except OSError as exc:
            # Gone (expired) or not linkable here (another file system, a kernel
            # that protects hard links): copy instead.
            if exc.errno not in (errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
        _copy(self.fd, dest, self.size_bytes)

    def close(self) -> None:
        self._closer()


def _copy(src: int, dest: Path, size: int) -> None:
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        offset = 0
        while offset < size:
            sent = os.sendfile(out, src, offset, size - offset)
            if sent == 0:
                raise OSError(errno.EIO, f"the stored context ended at byte {offset} of {size}")
            offset += sent
    except BaseException:
        os.close(out)
        with contextlib.suppress(OSError):
            dest.unlink()
        raise
    os.close(out)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
