"""asyncio helpers for the drivers (which import nothing of ours, so cloud_bridge/aio.py cannot serve here)."""

from __future__ import annotations

import asyncio


def reraise_swallowed_cancel() -> None:
    """Raise CancelledError if the current task was cancelled and a library swallowed the cancel.

    Python 3.11's `asyncio.wait_for` drops a cancel that lands in the same loop iteration as the awaited result
    (CPython gh-86296, fixed in 3.12); pymodbus awaits its requests through it. The task then keeps
    `cancelling() > 0` but runs on — a poll loop would poll forever and the gateway's TaskGroup would wait for it
    at shutdown (seen: `shelfgate demo` still running 30 s after Ctrl-C, its `poller[tx2]` on the RTU bus the
    one unfinished task). Call it in every loop that awaits such a library.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
