"""Batch building: contiguous seq, ids `{gateway_id}:{seq}`, holes and invalid rows end a batch."""

from __future__ import annotations

import pytest

from cloud_bridge.contract import EventBatch, EventType, StockChanged
from cloud_bridge.outbox import OutboxRow
from cloud_bridge.uplink import InvalidRowError, build_batch, event_id
from tests.cloud_bridge.memory_outbox import stock_changed


def row(seq: int, event_type: str = "stock.changed") -> OutboxRow:
    return OutboxRow(
        seq=seq, event_type=event_type, ts="2026-11-23T10:00:00.000Z", data=stock_changed(seq), priority=0
    )


def test_contiguous_rows_make_one_batch_that_round_trips() -> None:
    batch = build_batch(store_id="s1", gateway_id="s1-gw", rows=[row(5), row(6), row(7)])
    assert (batch.first_seq, batch.last_seq) == (5, 7)
    assert [e.id for e in batch.events] == ["s1-gw:5", "s1-gw:6", "s1-gw:7"]
    assert all(e.type is EventType.STOCK_CHANGED for e in batch.events)
    wire = batch.to_json()
    assert b'"schema":"shelfgate.events/1"' in wire
    assert EventBatch.model_validate_json(wire) == batch
    assert batch.events[0].data_as(StockChanged).count == 5


def test_a_hole_in_seq_ends_the_batch() -> None:
    batch = build_batch(store_id="s1", gateway_id="gw", rows=[row(1), row(2), row(4), row(5)])
    assert (batch.first_seq, batch.last_seq) == (1, 2)
    assert len(batch.events) == 2


def test_an_invalid_row_after_the_first_ends_the_batch_before_it() -> None:
    batch = build_batch(store_id="s1", gateway_id="gw", rows=[row(1), row(2), row(3, "bogus.type"), row(4)])
    assert batch.last_seq == 2


def test_an_invalid_first_row_is_reported_with_its_seq() -> None:
    with pytest.raises(InvalidRowError) as info:
        build_batch(store_id="s1", gateway_id="gw", rows=[row(9, "bogus.type"), row(10)])
    assert info.value.seq == 9
    assert "type" in info.value.reason


def test_no_rows_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        build_batch(store_id="s1", gateway_id="gw", rows=[])


def test_event_id_is_the_hub_idempotency_key() -> None:
    assert event_id("s7-gw", 42) == "s7-gw:42"
