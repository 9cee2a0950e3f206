"""Fleet derivation at a given instant: heartbeat age and the stale threshold (no clock involved)."""

from __future__ import annotations

from hub.api import fleet_entry
from hub.models import SeqRange, StoreRecord


def _record(last_heartbeat_at: float | None) -> StoreRecord:
    return StoreRecord(
        store_id="s1",
        gateway_id="s1-gw",
        online=True,
        status_ts="2026-01-01T00:00:00.000Z",
        boot_id="b",
        version="0.1.0",
        config_version="c",
        last_heartbeat_at=last_heartbeat_at,
        heartbeat_ts=None,
        outbox_depth=4,
        outbox_oldest_age_s=2.0,
        last_seq=10,
        devices_offline=1,
        active_alerts=2,
        received_seq=10,
        contiguous_seq=4,
        missing_ranges=(SeqRange(first_seq=5, last_seq=6),),
    )


def test_stale_exactly_after_the_threshold() -> None:
    fresh = fleet_entry(_record(1000.0), now=1090.0, stale_after_s=90.0)
    assert fresh.stale is False
    assert fresh.heartbeat_age_s == 90.0
    stale = fleet_entry(_record(1000.0), now=1090.5, stale_after_s=90.0)
    assert stale.stale is True
    assert stale.last_heartbeat_at == "1970-01-01T00:16:40.000Z"


def test_never_heard_is_stale_and_fields_pass_through() -> None:
    entry = fleet_entry(_record(None), now=5.0, stale_after_s=90.0)
    assert entry.stale is True
    assert entry.heartbeat_age_s is None
    assert entry.missing_ranges == [SeqRange(first_seq=5, last_seq=6)]
    assert (entry.outbox_depth, entry.devices_offline, entry.active_alerts) == (4, 1, 2)
