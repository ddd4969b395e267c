"""The process-wide model-call limiter: round robin across requests, and a reserve."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from rlm_service.models.limiter import FairLimiter, request_key


async def _hold(limiter: FairLimiter, key: str, order: list[str], release: asyncio.Event) -> None:
    request_key.set(key)
    await limiter.acquire()
    order.append(key)
    await release.wait()
    limiter.release()


def _start(limiter: FairLimiter, key: str, order: list[str],
           release: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(_hold(limiter, key, order, release),
                               context=contextvars.Context())


async def test_alone_a_request_uses_the_whole_width() -> None:
    limiter = FairLimiter(8)
    order: list[str] = []
    gate = asyncio.Event()
    tasks = [_start(limiter, "a", order, gate) for _ in range(20)]
    await asyncio.sleep(0.01)
    assert limiter.in_use == 8 and limiter.waiting == 12
    gate.set()
    await asyncio.gather(*tasks)
    assert limiter.in_use == 0 and len(order) == 20


async def test_freed_slots_go_round_robin_across_requests() -> None:
    limiter = FairLimiter(2)
    order: list[str] = []
    gates = {k: asyncio.Event() for k in "abc"}
    # "a" queues 10 calls first; "b" and "c" arrive after with 3 each.
    tasks = [_start(limiter, "a", order, gates["a"]) for _ in range(10)]
    await asyncio.sleep(0.01)
    tasks += [_start(limiter, k, order, gates[k]) for k in "bc" for _ in range(3)]
    await asyncio.sleep(0.01)
    assert order == ["a", "a"]
    for gate in gates.values():
        gate.set()
    await asyncio.gather(*tasks)
    # A FIFO semaphore would run all ten of "a" before any "b".
    assert order[2:8] == ["a", "b", "c", "a", "b", "c"], order


async def test_the_reserve_lets_a_small_request_start_beside_a_wide_one() -> None:
    limiter = FairLimiter(8, reserve=2)
    order: list[str] = []
    gate = asyncio.Event()
    wide = [_start(limiter, "wide", order, gate) for _ in range(100)]
    await asyncio.sleep(0.01)
    assert limiter.held_by("wide") == 6
    small = _start(limiter, "small", order, asyncio.Event())
    await asyncio.sleep(0.01)
    assert limiter.held_by("small") == 1 and order[-1] == "small"
    gate.set()
    await asyncio.gather(*wide)
    small.cancel()


async def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    limiter = FairLimiter(1)
    order: list[str] = []
    gate = asyncio.Event()
    first = _start(limiter, "a", order, gate)
    waiting = [_start(limiter, k, order, gate) for k in "bcd"]
    await asyncio.sleep(0.01)
    waiting[0].cancel()
    gate.set()
    await asyncio.gather(first, *waiting[1:])
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    assert order == ["a", "c", "d"] and limiter.in_use == 0 and limiter.waiting == 0


async def test_release_without_a_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="without a slot"):
        FairLimiter(2).release()
