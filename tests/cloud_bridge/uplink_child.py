"""Run one Uplink in its own process so a test can SIGKILL it and watch the broker publish the will.

Usage: python -m tests.cloud_bridge.uplink_child HOST PORT STORE_ID GATEWAY_ID BOOT_ID
"""

from __future__ import annotations

import asyncio
import sys

from cloud_bridge.uplink import Uplink
from tests.cloud_bridge.memory_outbox import MemoryOutbox


async def _main(host: str, port: int, store_id: str, gateway_id: str, boot_id: str) -> None:
    uplink = Uplink(
        store_id=store_id,
        gateway_id=gateway_id,
        boot_id=boot_id,
        version="0.1.0-test",
        config_version="cfg-test",
        outbox=MemoryOutbox(),
        host=host,
        port=port,
        backoff_base_s=0.05,
        backoff_cap_s=0.5,
    )
    await uplink.run()


if __name__ == "__main__":
    host, port, store_id, gateway_id, boot_id = sys.argv[1:6]
    asyncio.run(_main(host, int(port), store_id, gateway_id, boot_id))
