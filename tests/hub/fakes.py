"""Hand-built contract payloads, published the way a gateway's uplink would (QoS 1, status retained).

Built with the contract models wherever the payload is valid, so a drift in `cloud_bridge.contract` breaks
these tests instead of silently testing an old shape; malformed payloads are built by hand in the tests.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from cloud_bridge.contract import (
    AlertData,
    AlertKind,
    AlertState,
    DeviceHealth,
    Event,
    EventBatch,
    EventType,
    Heartbeat,
    Status,
    StockChanged,
    rfc3339,
    utc_now,
)

SKU = "06901234567892"
_ALERT_TYPES = {
    AlertState.RAISED: EventType.ALERT_RAISED,
    AlertState.ACKNOWLEDGED: EventType.ALERT_ACKNOWLEDGED,
    AlertState.RESOLVED: EventType.ALERT_RESOLVED,
}


def ts(offset_s: float = 0.0) -> str:
    """An RFC 3339 UTC timestamp, `offset_s` from a fixed origin (deterministic ordering in tests)."""
    return rfc3339(1_790_000_000.0 + offset_s)


def stock_event(gateway_id: str, seq: int, bin_id: str, count: int, *, delta: int = -1) -> Event:
    """A `stock.changed` for one bin."""
    data = StockChanged(
        bin_id=bin_id,
        sku=SKU,
        count=count,
        delta=delta,
        cause="pick",
        weight_g=count * 250.0,
        safety_stock=3,
        max_stock=20,
    )
    return Event(
        id=f"{gateway_id}:{seq}",
        seq=seq,
        type=EventType.STOCK_CHANGED,
        ts=ts(seq),
        data=data.model_dump(mode="json"),
    )


def alert_event(
    gateway_id: str,
    seq: int,
    alert_id: str,
    state: AlertState,
    *,
    bin_id: str = "A01",
    by: str | None = None,
    count: int | None = 1,
) -> Event:
    """An alert lifecycle event (raised / acknowledged / resolved)."""
    data = AlertData(
        alert_id=alert_id,
        bin_id=bin_id,
        sku=SKU,
        kind=AlertKind.LOW,
        state=state,
        count=count,
        message=f"{bin_id} low",
        raised_at=ts(0),
        by=by,
    )
    return Event(
        id=f"{gateway_id}:{seq}",
        seq=seq,
        type=_ALERT_TYPES[state],
        ts=ts(seq),
        data=data.model_dump(mode="json"),
    )


def batch(store_id: str, gateway_id: str, events: list[Event]) -> bytes:
    """The `events` payload for contiguous events."""
    return EventBatch(
        store_id=store_id,
        gateway_id=gateway_id,
        first_seq=events[0].seq,
        last_seq=events[-1].seq,
        events=events,
    ).to_json()


def batch_dict(store_id: str, gateway_id: str, events: list[Event]) -> dict[str, Any]:
    """A batch as a mutable dict, for building malformed variants."""
    loaded: dict[str, Any] = EventBatch(
        store_id=store_id,
        gateway_id=gateway_id,
        first_seq=events[0].seq,
        last_seq=events[-1].seq,
        events=events,
    ).model_dump(mode="json", by_alias=True)
    return loaded


def status(gateway_id: str, state: str, *, boot_id: str = "boot-1", version: str = "0.1.0") -> bytes:
    """A birth ("online") or will ("offline") payload."""
    return Status(
        state="online" if state == "online" else "offline",
        gateway_id=gateway_id,
        boot_id=boot_id,
        version=version,
        config_version="cfg-7",
        ts=rfc3339(utc_now()),
    ).to_json()


def heartbeat(
    gateway_id: str,
    *,
    outbox_depth: int = 0,
    last_seq: int = 0,
    devices_offline: int = 0,
    boot_id: str = "boot-1",
) -> bytes:
    """A `health` payload with `devices_offline` of three devices down."""
    devices = [
        DeviceHealth(device_id=f"tx{i}", online=i >= devices_offline, last_seen_age_s=0.1, polls=10, errors=0)
        for i in range(3)
    ]
    return Heartbeat(
        gateway_id=gateway_id,
        boot_id=boot_id,
        ts=rfc3339(utc_now()),
        uptime_s=12.5,
        cpu_pct=3.0,
        mem_rss_mb=48.0,
        disk_free_mb=900.0,
        temperature_c=51.0,
        outbox_depth=outbox_depth,
        outbox_oldest_age_s=1.5 if outbox_depth else None,
        last_seq=last_seq,
        devices=devices,
        active_alerts=0,
    ).to_json()


def _mqtt_string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_with_will(
    host: str, port: int, client_id: str, will_topic: str, will_payload: bytes
) -> socket.socket:
    """Open a raw MQTT 3.1.1 connection whose will is a retained QoS 1 message (§3.1.2.5-3.1.2.7).

    Closing the returned socket without DISCONNECT is an abnormal loss, so the broker publishes the will — the
    same path a gateway that loses power takes. Built by hand because client libraries only ever disconnect
    politely.
    """
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retain
    variable = _mqtt_string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
    payload = (
        _mqtt_string(client_id.encode()) + _mqtt_string(will_topic.encode()) + _mqtt_string(will_payload)
    )
    body = variable + payload
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(bytes([0x10]) + _remaining_length(len(body)) + body)
    connack = sock.recv(4)
    if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
        sock.close()
        raise ConnectionError(f"CONNACK refused: {connack!r}")
    return sock
