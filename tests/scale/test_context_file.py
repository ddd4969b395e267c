"""The upload store and the open file a run uses, without a server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from rlm_service.uploads import ContextNotFound, ContextStore


async def _store(tmp_path: Path, text: bytes, ttl: float) -> tuple[ContextStore, str]:
    store = ContextStore(tmp_path / "uploads", max_bytes=1 << 20, total_bytes=1 << 20,
                         ttl_seconds=ttl)
    upload = store.begin()
    await upload.write(0, text[:5])
    await upload.write(5, text[5:])
    return store, upload.commit().ref


async def test_a_placed_context_is_a_hard_link(tmp_path: Path) -> None:
    store, ref = await _store(tmp_path, "ünïcode text".encode(), ttl=60)
    opened = store.open(ref)
    assert (opened.chars, opened.preview) == (12, "ünïcode text")
    dest = tmp_path / "run" / "context.txt"
    dest.parent.mkdir()
    opened.place(dest)
    assert dest.read_text() == "ünïcode text"
    assert os.stat(dest).st_ino == os.stat(store.root / ref).st_ino
    opened.close()
    assert opened.closed
    with pytest.raises(ValueError, match="closed"):
        opened.place(tmp_path / "again.txt")
    store.close()
    assert not store.root.exists()


async def test_an_expired_context_stays_readable_to_a_run_that_opened_it(
        tmp_path: Path) -> None:
    store, ref = await _store(tmp_path, b"still here after expiry", ttl=0.05)
    opened = store.open(ref)
    await asyncio.sleep(0.1)
    assert store.sweep() == 1 and not (store.root / ref).exists()
    with pytest.raises(ContextNotFound):
        store.open(ref)
    # The file is gone: the run's copy comes from the open descriptor.
    dest = tmp_path / "context.txt"
    opened.place(dest)
    assert dest.read_bytes() == b"still here after expiry"
    assert os.stat(dest).st_nlink == 1
    opened.close()
    store.close()
