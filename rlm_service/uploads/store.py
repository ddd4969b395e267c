"""The upload store: contexts written in chunks to files under the runtime dir,
kept for a TTL, under a per-upload and a total size cap.

An upload writes ``<ref>.part`` and becomes visible (renamed to ``<ref>``) only when
complete, so a cancelled or failed upload leaves nothing behind and a half-written
context can never be used. The text is checked as UTF-8 and counted as it arrives."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rlm_service.run.types import ErrorKind, RequestFailed
from rlm_service.uploads.file import ContextFile

log = logging.getLogger(__name__)

PREVIEW_CHARS = 500
_REF = re.compile(r"ctx-[0-9a-f]{32}")


class ContextNotFound(RequestFailed):
    def __init__(self, ref: str) -> None:
        shown = ref if len(ref) <= 80 else ref[:77] + "..."
        super().__init__(ErrorKind.CONTEXT_NOT_FOUND,
                         f"context_ref {shown!r} is unknown or has expired; upload the "
                         "context again with UploadContext")


class ContextTooLarge(RequestFailed):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.CONTEXT_TOO_LARGE, message)


class BadUpload(RequestFailed):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.INVALID_REQUEST, message)


@dataclass(frozen=True)
class Stored:
    ref: str
    path: Path
    size_bytes: int
    chars: int
    preview: str
    expires: float  # time.monotonic()
    expires_at: float  # time.time(), for clients


class ContextStore:
    def __init__(self, root: Path, *, max_bytes: int, total_bytes: int,
                 ttl_seconds: float) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.total_bytes = total_bytes
        self.ttl_seconds = ttl_seconds
        self._stored: dict[str, Stored] = {}
        self._uploads: set[Upload] = set()
        # Left by a previous process in the same runtime dir: of no use to anyone now.
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(mode=0o700, parents=True)

    @property
    def bytes_used(self) -> int:
        """Stored contexts plus uploads under way."""
        return (sum(s.size_bytes for s in self._stored.values())
                + sum(u.size for u in self._uploads))

    @property
    def count(self) -> int:
        return len(self._stored)

    def begin(self) -> Upload:
        self.sweep()
        upload = Upload(self, "ctx-" + secrets.token_hex(16))
        self._uploads.add(upload)
        return upload

    def open(self, ref: str) -> ContextFile:
        """The stored context ``ref``, open for one request; raises ContextNotFound."""
        stored = self._stored.get(ref) if _REF.fullmatch(ref) else None
        if stored is None or stored.expires <= time.monotonic():
            self.sweep()
            raise ContextNotFound(ref)
        try:
            return ContextFile.open(ref, stored.path, stored.chars, stored.preview)
        except FileNotFoundError:
            self._stored.pop(ref, None)
            raise ContextNotFound(ref) from None

    def sweep(self) -> int:
        """Removes expired contexts; returns how many. A request that opened one keeps
        reading it through its descriptor."""
        now = time.monotonic()
        expired = [s for s in self._stored.values() if s.expires <= now]
        for stored in expired:
            del self._stored[stored.ref]
            with contextlib.suppress(FileNotFoundError):
                stored.path.unlink()
        return len(expired)

    async def sweep_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if removed := self.sweep():
                log.info("removed %d expired uploaded contexts", removed)

    def close(self) -> None:
        for upload in list(self._uploads):
            upload.abort()
        self._stored.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def _admit(self, upload: Upload, more: int) -> None:
        size = upload.size + more
        if size > self.max_bytes:
            raise ContextTooLarge(f"the context is over the upload limit of {self.max_bytes:,} "
                                  "bytes (CONTEXT_UPLOAD_MAX_BYTES)")
        if self.bytes_used + more > self.total_bytes:
            self.sweep()
            if self.bytes_used + more > self.total_bytes:
                raise ContextTooLarge(
                    f"the server holds {self.total_bytes:,} bytes of uploaded contexts at most "
                    "and has no room for this one now; retry later")

    def _finish(self, upload: Upload, stored: Stored | None) -> None:
        self._uploads.discard(upload)
        if stored is not None:
            self._stored[stored.ref] = stored


class Upload:
    """One context being received. write() the chunks in order, then commit();
    abort() (also after a failure) removes what was written."""

    def __init__(self, store: ContextStore, ref: str) -> None:
        self.store = store
        self.ref = ref
        self.size = 0
        self.chars = 0
        self._preview = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._part = store.root / f"{ref}.part"
        self._fd: int | None = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                       | os.O_CLOEXEC, 0o644)

    async def write(self, offset: int, data: bytes) -> None:
        if self._fd is None:
            raise BadUpload("the upload is already finished")
        if offset != self.size:
            raise BadUpload(f"a chunk starts at byte {offset:,}, but {self.size:,} bytes "
                            "were received: chunks must be sent in order, none left out")
        if not data:
            return
        self.store._admit(self, len(data))
        self.size += len(data)  # counted before the write, so concurrent uploads see it
        # Shielded: a cancel must not let abort() close the descriptor while the
        # thread still writes to it (its number could already name another file).
        work = asyncio.ensure_future(asyncio.to_thread(self._absorb, self._fd, data))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await work
            raise
        except UnicodeDecodeError as exc:
            raise BadUpload(f"the context is not UTF-8 text (byte {offset + exc.start:,})") \
                from None

    def _absorb(self, fd: int, data: bytes) -> None:
        if data.isascii() and not self._decoder.getstate()[0]:
            # Most text: valid as it is, one character a byte, no str made.
            self.chars += len(data)
            if len(self._preview) < PREVIEW_CHARS:
                self._preview += data[:PREVIEW_CHARS - len(self._preview)].decode("ascii")
        else:
            text = self._decoder.decode(data)
            self.chars += len(text)
            if len(self._preview) < PREVIEW_CHARS:
                self._preview += text[:PREVIEW_CHARS - len(self._preview)]
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def commit(self) -> Stored:
        if self._fd is None:
            raise BadUpload("the upload is already finished")
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise BadUpload("the context ends inside a UTF-8 character: a chunk is missing "
                            "at the end") from None
        os.close(self._fd)
        self._fd = None
        path = self.store.root / self.ref
        os.rename(self._part, path)
        store = self.store
        stored = Stored(self.ref, path, self.size, self.chars, self._preview,
                        time.monotonic() + store.ttl_seconds, time.time() + store.ttl_seconds)
        store._finish(self, stored)
        return stored

    def abort(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            with contextlib.suppress(FileNotFoundError):
                self._part.unlink()
        self.store._finish(self, None)
