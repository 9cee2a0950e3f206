"""Hostile MQTT input at both ends, through a real Mosquitto.

The hub: event batches that parse as JSON but hold what the database cannot store (NaN or infinite weights,
integers past 64 bits), nested 10 000 deep, with a lone surrogate escape, or over the payload cap. Each is
quarantined with its reason, the worker keeps consuming (a good batch after them is applied), nothing of them
is applied. Before, a NaN weight or a 20-digit count passed `hub.parse` and failed the database apply, which
ends ingest — and, as the message is never acknowledged, ended it again on every redelivery.
(`tests/hub/test_service.py` already covers invalid JSON, a wrong store, seq mismatches and schema errors.)

The gateway: a real `Gateway` with its uplink on the broker. `resend` sent twice with the same id runs once and
both answers are the same; the same command on another store's topic is never seen or answered; hostile
`resend` payloads (oversized, not UTF-8, nested too deep, schema-violating, bad arguments) are refused with a
reason on `cmd-result` when they carry a usable id, and none of them runs. (Retained commands are refused by
the uplink and tested there: a retained publish reaches a subscriber that is already subscribed as a live one,
MQTT 3.1.1 §3.3.1.3.) (`tests/cloud_bridge/test_command_intake.py`
covers the uplink's intake with arbitrary bytes; this is the same through the real gateway and its handler.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from cloud_bridge.contract import Command, CommandResult, command_result_topic, command_topic, events_topic
from cloud_bridge.uplink import MAX_COMMAND_BYTES, MAX_COMMAND_DEPTH
from edge.config import load_config
from edge.gateway import Gateway
from firmware_sims.runner import SimStore
from hub.parse import MAX_PAYLOAD_BYTES
from shelfgate.broker import Mosquitto
from shelfgate.demo import layout_from_config, point_config_at
from tests.cloud_bridge.mqtt_helpers import wait_until
from tests.hub.fakes import batch, batch_dict, stock_event
from tests.hub.test_service import _config as hub_config
from tests.hub.test_service import _running as running_hub
from tests.shelfgate.installer_stack import STORE_YAML

pytestmark = pytest.mark.timeout(120)

WAIT_S = 60.0
"""A hang guard for a loaded 2-core machine, not a timing claim."""

GW = "s1-gw"
ISSUED = "2026-11-23T16:00:00.000Z"


# --- the hub -------------------------------------------------------------------------------------------------


def _hostile_batches() -> list[tuple[str, bytes, str]]:
    """(name, payload, fragment of the quarantine reason), all on s1's events topic."""
    good = json.dumps(batch_dict("s1", GW, [stock_event(GW, 1, "A01", 5)]))
    assert '"weight_g": 1250.0' in good
    assert '"count": 5' in good
    return [
        ("nan-weight", good.replace('"weight_g": 1250.0', '"weight_g": NaN').encode(), "NaN or infinite"),
        (
            "inf-weight",
            good.replace('"weight_g": 1250.0', '"weight_g": -Infinity').encode(),
            "NaN or infinite",
        ),
        ("count-past-64-bits", good.replace('"count": 5', '"count": ' + "9" * 20).encode(), "64 bits"),
        (
            "nested-10000",
            good.replace('"count": 5', '"count": 5, "x": ' + "[" * 10_000 + "]" * 10_000).encode(),
            "",
        ),
        ("lone-surrogate", good.replace('"A01"', '"\\ud800"', 1).encode(), "bad-json"),
        ("invalid-utf8", good.replace('"A01"', '"A\xff1"', 1).encode("latin-1"), "bad-json"),
        ("oversized", b'{"pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}', "too-large"),
    ]


async def test_hostile_batches_are_quarantined_and_ingest_carries_on(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    db_url = f"sqlite:///{tmp_path / 'hub.sqlite3'}"
    hostile = _hostile_batches()
    async with running_hub(hub_config(db_url, mosquitto)) as hub:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="hostile-gw") as gw:
            for _, payload, _ in hostile:
                await gw.publish(events_topic("s1"), payload, qos=1)
            await gw.publish(events_topic("s1"), batch("s1", GW, [stock_event(GW, 1, "A01", 7)]), qos=1)
        await hub.wait_messages(len(hostile) + 1)

        counters = await hub.counters()
        assert counters["quarantined"] == len(hostile)
        assert counters["events_applied"] == 1
        assert (await hub.get("/api/health"))["mqtt_connected"]
        quarantined = list(reversed(await hub.get("/api/quarantine")))
        assert len(quarantined) == len(hostile)
        for (name, _, reason), item in zip(hostile, quarantined, strict=True):
            assert reason in item["reason"], (name, item["reason"])
        assert "nested" in quarantined[3]["reason"] or "recursion" in quarantined[3]["reason"]
        # Only the good batch is in effect: its count, its one event.
        assert [s["count"] for s in await hub.get("/api/stores/s1/stock")] == [7]
        assert await hub.events_rows() == [(f"{GW}:1", 1)]


# --- the gateway ---------------------------------------------------------------------------------------------

STORE = "inst-001"
"""The store id of `STORE_YAML`."""


@contextlib.asynccontextmanager
async def running_gateway(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Gateway]:
    """A real gateway (engine, outbox, uplink) on the broker, its transmitter a simulator."""
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(STORE_YAML, encoding="utf-8")
    base = load_config(cfg_file)
    layout = layout_from_config(base, seed=5, initial_counts={"A01": 6})
    async with SimStore(layout, run_scenario=False) as sim:
        cfg = point_config_at(
            base, dict(sim.endpoints), broker=(broker.host, broker.port), api_port=0, data_dir=tmp_path / "gw"
        )
        ready = asyncio.Event()
        gateway = Gateway(cfg, on_ready=lambda _g: ready.set())
        task = asyncio.create_task(gateway.run(serve_api=False), name="test.gateway")
        try:
            async with asyncio.timeout(WAIT_S):
                await ready.wait()
            await wait_until(
                lambda: bool(gateway.uplink and gateway.uplink.connected), "the uplink to connect"
            )
            yield gateway
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Hq:
    """The hub's side of the command channel: publish on `cmd/`, read `cmd-result` of one or two stores."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.results: asyncio.Queue[tuple[str, CommandResult]] = asyncio.Queue()

    async def read(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            await self.results.put((message.topic.value, CommandResult.model_validate_json(message.payload)))

    async def send(self, store_id: str, name: str, payload: bytes) -> None:
        await self.client.publish(command_topic(store_id, name), payload, qos=1)

    async def until_marker(self) -> list[tuple[str, CommandResult]]:
        """Send a ping marker to our store; return every result that arrived before its answer.

        The uplink takes commands one at a time in arrival order and Mosquitto keeps one publisher's order to
        one subscriber, so whatever the earlier messages caused has been answered once the marker is."""
        marker = f"marker-{id(self)}-{self.results.qsize()}-{asyncio.get_running_loop().time()}"
        await self.send(STORE, "ping", Command(id=marker, issued_at=ISSUED).model_dump_json().encode())
        before: list[tuple[str, CommandResult]] = []
        async with asyncio.timeout(WAIT_S):
            while (item := await self.results.get())[1].id != marker:
                before.append(item)
        return before


def resend(command_id: str, **args: object) -> bytes:
    return Command(id=command_id, issued_at=ISSUED, args=args).model_dump_json().encode()


async def test_the_gateway_runs_a_replayed_command_once_and_refuses_hostile_ones(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.commands")
    valid = {"ranges": [{"first_seq": 1, "last_seq": 1}]}
    deep = "[" * (MAX_COMMAND_DEPTH + 1) + "]" * (MAX_COMMAND_DEPTH + 1)
    hostile = [
        (
            "oversized",
            b'{"id": "h-big", "issued_at": "x", "args": {"pad": "' + b"a" * MAX_COMMAND_BYTES + b'"}}',
        ),
        ("not-utf8", b'{"id": "h-utf8", "issued_at": "\xff"}'),
        ("too-deep", f'{{"id": "h-deep", "issued_at": "{ISSUED}", "args": {{"v": {deep}}}}}'.encode()),
        ("schema", b'{"id": "h-schema", "issued_at": 5, "args": {"ranges": []}}'),
        ("unknown-field", b'{"id": "h-extra", "issued_at": "x", "args": {}, "sudo": true}'),
        ("bad-args", resend("h-args", ranges="all")),
    ]
    async with running_gateway(tmp_path, mosquitto) as gateway:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="hostile-hq") as client:
            hq = Hq(client)
            await client.subscribe(command_result_topic(STORE), qos=1)
            await client.subscribe(command_result_topic("other-store"), qos=1)
            reader = asyncio.create_task(hq.read(), name="hq.read")
            try:
                # Replayed: same id twice (QoS 1 redelivery, or a hub retry) -> run once, answered twice alike.
                await hq.send(STORE, "resend", resend("r-1", **valid))
                await hq.send(STORE, "resend", resend("r-1", **valid))
                # Wrong store: another store's command topic is not this gateway's to see.
                await hq.send("other-store", "resend", resend("r-other", **valid))
                for _, payload in hostile:
                    await hq.send(STORE, "resend", payload)
                results = await hq.until_marker()
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

        by_id: dict[str, list[CommandResult]] = {}
        for topic, result in results:
            assert topic == command_result_topic(STORE)  # nothing answers for the other store
            by_id.setdefault(result.id, []).append(result)
        first, replay = by_id.pop("r-1")
        assert first.ok, first
        assert replay == first  # answered from the de-dup cache
        expected_refusals = {
            "h-big": "exceeds the limit",
            "h-deep": "deeper than",
            "h-schema": "issued_at",
            "h-extra": "sudo",
            "h-args": "invalid resend args",
        }
        assert set(by_id) == set(expected_refusals)  # h-utf8 has no readable id: counted, not answered
        for command_id, reason in expected_refusals.items():
            (result,) = by_id[command_id]
            assert not result.ok
            assert result.error is not None
            assert reason in result.error, (command_id, result.error)
        runs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resend ")]
        assert len(runs) == 1, runs  # r-1 once; nothing hostile, nothing for other-store
        assert runs[0].startswith("resend r-1:")
        assert gateway.uplink is not None
        assert gateway.uplink.connected
