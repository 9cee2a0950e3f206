"""The hub accepts and keeps the heartbeat's `outbox_alarm` (edge/outbox_quota.py), and still accepts heartbeats
from gateways that predate the field."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from cloud_bridge.contract import Heartbeat, health_topic
from hub.db import HubDB
from hub.parse import HeartbeatMessage, parse_message
from tests.hub.fakes import heartbeat

GW = "s1-gw"
ALARM = "outbox quota hit (levels): level updates now coalesce to the latest per bin"


def _stored_heartbeat(path: Path) -> dict[str, object]:
    conn = sqlite3.connect(path)
    try:
        (text,) = conn.execute("SELECT heartbeat FROM stores WHERE store_id = 's1'").fetchone()
    finally:
        conn.close()
    stored: dict[str, object] = json.loads(text)
    return stored


async def test_the_alarm_is_parsed_and_stored_and_an_old_heartbeat_still_validates(tmp_path: Path) -> None:
    old = json.loads(heartbeat(GW, outbox_depth=12, last_seq=40))
    assert old.pop("outbox_alarm") is None  # an old gateway sends no such key at all
    with_alarm = Heartbeat.model_validate({**old, "outbox_alarm": ALARM}).to_json()
    path = tmp_path / "hub.sqlite3"
    async with HubDB(f"sqlite:///{path}") as db:
        parsed_old = parse_message(health_topic("s1"), json.dumps(old).encode())
        assert isinstance(parsed_old, HeartbeatMessage)
        assert parsed_old.heartbeat.outbox_alarm is None
        await db.record_heartbeat(parsed_old, 10.0)
        parsed = parse_message(health_topic("s1"), with_alarm)
        assert isinstance(parsed, HeartbeatMessage)
        await db.record_heartbeat(parsed, 11.0)
    assert _stored_heartbeat(path)["outbox_alarm"] == ALARM
