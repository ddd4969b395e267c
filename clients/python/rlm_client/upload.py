"""Sending a context with UploadContext: in chunks, from a str or straight from a file.

Above ``UPLOAD_ABOVE`` bytes the clients upload a text context first and send its
ref, so no message comes near gRPC's size limit and the text is never copied whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlm_service._gen.rlm.v1 import rlm_pb2

# Uploaded rather than inline from this size on (UTF-8 bytes of a str, or a file's size).
UPLOAD_ABOVE = 16 << 20
CHUNK_BYTES = 1 << 20

TextSource = str | bytes | os.PathLike[str]


def chunks(source: TextSource, chunk_bytes: int = CHUNK_BYTES) -> Iterator[rlm_pb2.ContextChunk]:
    """The text as ordered chunks; a path is read piece by piece, never whole."""
    offset = 0
    for data in _pieces(source, chunk_bytes):
        yield rlm_pb2.ContextChunk(data=data, offset=offset)
        offset += len(data)
    yield rlm_pb2.ContextChunk(offset=offset, last=True)


def _pieces(source: TextSource, size: int) -> Iterator[bytes]:
    if isinstance(source, bytes):
        for i in range(0, len(source), size):
            yield source[i:i + size]
    elif isinstance(source, str):
        # Characters, not bytes, are sliced, so no piece splits one; at most 4x size.
        step = max(1, size // 4) if not source.isascii() else size
        for i in range(0, len(source), step):
            yield source[i:i + step].encode("utf-8")
    else:
        with Path(source).open("rb") as f:
            while piece := f.read(size):
                yield piece


def wants_upload(context: Any, threshold: int = UPLOAD_ABOVE) -> bool:
    """Whether ``context`` goes by upload: a path, or a str or bytes above ``threshold``."""
    if isinstance(context, os.PathLike):
        return True
    if isinstance(context, str):
        # len() is a lower bound of the UTF-8 size; encode only when it might matter.
        return len(context) > threshold or (
            4 * len(context) > threshold and len(context.encode("utf-8")) > threshold)
    return isinstance(context, bytes) and len(context) > threshold
