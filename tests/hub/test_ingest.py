"""Ingest pieces that need no broker: the backoff and the swallowed-cancel guard."""

from __future__ import annotations

import asyncio
import random
import sys

import pytest

from cloud_bridge.aio import reraise_swallowed_cancel
from hub.ingest import Backoff


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0, rng=random.Random(7))
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    delays = [backoff.next_delay_s() for _ in ceilings]
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not lock-step
    backoff.reset()
    assert backoff.next_delay_s() <= 0.5


async def test_a_swallowed_cancel_is_reraised() -> None:
    """The exact 3.11 race (CPython gh-86296): the awaited future completes and the task is cancelled in the
    same loop iteration. 3.11's wait_for returns the result and drops the cancel; the guard re-raises it."""
    loop = asyncio.get_running_loop()
    reached_guard = asyncio.Event()

    async def victim() -> None:
        fut: asyncio.Future[int] = loop.create_future()
        task = asyncio.current_task()
        assert task is not None

        def complete_and_cancel() -> None:
            fut.set_result(1)
            task.cancel()

        loop.call_soon(complete_and_cancel)
        await asyncio.wait_for(fut, timeout=30)  # on 3.12+ this raises CancelledError itself
        reached_guard.set()
        reraise_swallowed_cancel()
        await asyncio.sleep(3600)  # without the guard the task would wait here, un-stoppable

    task = asyncio.create_task(victim(), name="test.victim")
    with pytest.raises(asyncio.CancelledError):  # a hang becomes TimeoutError, which fails this
        async with asyncio.timeout(10):
            await task
    assert task.cancelled()
    if sys.version_info < (3, 12):
        assert reached_guard.is_set()  # the race really was reproduced, and the guard ended it
