"""The whole repair loop on real parts: a gateway (`GatewayStore` + `Uplink` + `edge.commands.handle_resend`)
loses rows from its outbox before sending them; two hub workers see the hole, ask `cmd/resend`, and the
gateway re-sends from its retained ledger — or answers that it no longer has them, and the hub records them
lost and applies what followed. Real Mosquitto, both database engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from cloud_bridge.contract import Command, CommandResult, EventType
from cloud_bridge.resend import RESEND_COMMAND
from cloud_bridge.uplink import UnknownCommandError, Uplink
from edge.commands import handle_resend
from edge.store import GatewayStore, NewEvent
from hub.models import SeqRange
from shelfgate.broker import Mosquitto
from tests.cloud_bridge.mqtt_helpers import running, wait_until
from tests.hub.fakes import stock_event
from tests.hub.workers import WAIT_S, Worker, total, worker

GW = "s1-gw"
SETTINGS = {"gap_timeout_s": 0.3, "gap_check_s": 0.1, "resend_min_interval_s": 0.2}


def _events(n: int) -> list[NewEvent]:
    return [
        NewEvent(EventType.STOCK_CHANGED.value, e.ts, e.data)
        for e in (stock_event(GW, seq, "A01", 100 - seq) for seq in range(1, n + 1))
    ]


@contextlib.asynccontextmanager
async def _gateway(
    path: Path, broker: Mosquitto, drop: range, *, drop_from_ledger: bool
) -> AsyncIterator[GatewayStore]:
    """A gateway whose seqs in `drop` vanished from the outbox before the uplink ran (as a disk quota or a
    hub crash between PUBACK and commit would lose them); with `drop_from_ledger`, from the ledger too."""
    async with GatewayStore(path) as store:
        await store.record(_events(10))
        conn = sqlite3.connect(path)
        try:
            conn.execute("DELETE FROM outbox WHERE seq BETWEEN ? AND ?", (drop.start, drop.stop - 1))
            if drop_from_ledger:
                conn.execute("DELETE FROM ledger WHERE seq BETWEEN ? AND ?", (drop.start, drop.stop - 1))
            conn.commit()
        finally:
            conn.close()

        async def on_command(name: str, command: Command) -> CommandResult:
            if name == RESEND_COMMAND:
                return await handle_resend(store, command)
            raise UnknownCommandError(name)

        uplink = Uplink(
            store_id="s1",
            gateway_id=GW,
            boot_id="b1",
            version="test",
            config_version="c1",
            outbox=store,
            host=broker.host,
            port=broker.port,
            heartbeat_s=3600,
            on_command=on_command,
            batch_max_events=3,
        )
        async with running(uplink):
            yield store


async def _eventually(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` (the database is the only place this progress shows); the ceiling only stops a hang."""
    async with asyncio.timeout(WAIT_S):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)
    raise AssertionError(what)


async def _wait_applied(worker: Worker, seq: int) -> None:
    async def applied() -> bool:
        record = await worker.db.store("s1")
        return record is not None and record.applied_seq >= seq

    await _eventually(f"applied through {seq}", applied)


async def test_a_lost_range_is_resent_by_the_gateway_and_applied_in_order(
    db_url: str, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        worker("w1", db_url, mosquitto, **SETTINGS) as one,
        worker("w2", db_url, mosquitto, **SETTINGS) as two,
        _gateway(tmp_path / "gw.db", mosquitto, range(4, 7), drop_from_ledger=False) as store,
    ):
        await _wait_applied(one, 10)
        await wait_until(lambda: total((one, two), "resend_answers") >= 1, "the gateway's answer", WAIT_S)

        async def drained() -> bool:
            return await store.depth() == (0, None)

        await _eventually("the gateway's outbox drained", drained)
        record = await one.db.store("s1")
        stock = await two.db.stock("s1")
    workers = (one, two)
    assert record is not None
    assert (record.applied_seq, record.missing_ranges, record.lost_ranges) == (10, (), ())
    assert [(s.bin_id, s.count) for s in stock] == [("A01", 90)]
    assert total(workers, "resend_requests") == 1
    assert total(workers, "events_lost") == 0
    assert total(workers, "events_applied") == 10


async def test_a_range_past_the_gateways_retention_is_recorded_lost_and_the_rest_applied(
    db_url: str, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        worker("w1", db_url, mosquitto, **SETTINGS) as one,
        worker("w2", db_url, mosquitto, **SETTINGS) as two,
        _gateway(tmp_path / "gw.db", mosquitto, range(4, 7), drop_from_ledger=True),
    ):
        await _wait_applied(one, 10)
        record = await one.db.store("s1")
        stock = await two.db.stock("s1")
    workers = (one, two)
    assert record is not None
    assert (record.applied_seq, record.lost_ranges) == (10, (SeqRange(first_seq=4, last_seq=6),))
    assert [(s.bin_id, s.count) for s in stock] == [("A01", 90)]
    assert total(workers, "events_lost") == 3
    assert total(workers, "events_applied") == 7


async def test_events_published_across_a_broker_restart_all_reach_the_hub(
    db_url: str, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Mosquitto 2.0 does not restore shared subscriptions after a restart: what the gateway publishes
    before the workers re-subscribe is acknowledged to it and dropped. Whether or not that happens in a given
    run, the hub must end with every event, applied once, in order: the heartbeat (empty outbox, `last_seq`)
    or the next batch shows the hole, and `cmd/resend` fills it."""
    events = _events(12)
    async with (
        worker("w1", db_url, mosquitto, **SETTINGS) as one,
        worker("w2", db_url, mosquitto, **SETTINGS) as two,
        GatewayStore(tmp_path / "gw.db") as store,
    ):

        async def on_command(name: str, command: Command) -> CommandResult:
            if name == RESEND_COMMAND:
                return await handle_resend(store, command)
            raise UnknownCommandError(name)

        uplink = Uplink(
            store_id="s1",
            gateway_id=GW,
            boot_id="b1",
            version="test",
            config_version="c1",
            outbox=store,
            host=mosquitto.host,
            port=mosquitto.port,
            heartbeat_s=0.5,
            on_command=on_command,
            backoff_base_s=0.05,
            backoff_cap_s=0.2,
        )
        async with running(uplink):
            await store.record(events[:4])
            await _wait_applied(one, 4)
            mosquitto.stop()
            await store.record(events[4:8])  # counted while the broker is away
            mosquitto.start()
            await store.record(events[8:])
            await _wait_applied(two, 12)
        record = await one.db.store("s1")
        rows = await two.db.query("SELECT seq FROM events ORDER BY seq")
        stock = await one.db.stock("s1")
    assert record is not None
    assert (record.applied_seq, record.lost_ranges) == (12, ())
    assert rows == [(seq,) for seq in range(1, 13)]
    assert [(s.bin_id, s.count) for s in stock] == [("A01", 88)]
    assert total((one, two), "events_applied") == 12
