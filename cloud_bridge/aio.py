"""asyncio helpers both MQTT ends need (the gateway uplink and the hub ingest)."""

from __future__ import annotations

import asyncio


def reraise_swallowed_cancel() -> None:
    """Re-raise a cancellation that a library swallowed.

    Python 3.11's `asyncio.wait_for` (used inside aiomqtt's connect, subscribe and publish) drops a cancel that
    lands in the same loop iteration as the awaited result (CPython gh-86296, fixed in 3.12). The task then
    keeps `cancelling() > 0` but runs on: a reconnect loop would never stop, and a TaskGroup waiting for that
    child would hang shutdown. Call this after each such await and in retry loops.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
