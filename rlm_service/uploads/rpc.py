"""The UploadContext RPC's edge: chunks in, a ContextRef out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.uploads.store import BadUpload, ContextStore


async def receive(store: ContextStore,
                  chunks: AsyncIterator[rlm_pb2.ContextChunk]) -> rlm_pb2.ContextRef:
    """Stores the streamed context; raises RequestFailed (too large, out of order, not
    UTF-8). Anything that ends it early, a client's cancel included, removes it."""
    upload = store.begin()
    try:
        last = False
        async for chunk in chunks:
            if last:
                raise BadUpload("a chunk came after the one marked last")
            await upload.write(chunk.offset, chunk.data)
            last = chunk.last
        if not last:
            # Also what a client's cancel looks like here: the stream just ends.
            raise BadUpload("the upload ended without a chunk marked last; nothing was "
                            "stored")
        stored = upload.commit()
    except BaseException:
        upload.abort()
        raise
    expires = Timestamp()
    expires.FromNanoseconds(int(stored.expires_at * 1e9))
    return rlm_pb2.ContextRef(ref=stored.ref, size_bytes=stored.size_bytes, chars=stored.chars,
                              expires_at=expires)
