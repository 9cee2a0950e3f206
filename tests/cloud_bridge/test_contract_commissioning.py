"""The `commissioning` event's payload: round trip through the wire form, what it refuses, and that the gateway's
mapping (`edge.installer.commissioning_payload`) turns a record built by `edge.calibration` from real
installer-shaped audit entries into it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cloud_bridge.contract import (
    EVENT_DATA_MODELS,
    Commissioning,
    Event,
    EventBatch,
    EventType,
    events_topic,
)
from edge.calibration import append_audit, commissioning_record, read_audit
from edge.installer import commissioning_payload
from hub.parse import BatchMessage, PayloadRejected, parse_message

TS = "2026-11-23T10:00:00.000Z"


def record_data() -> dict[str, Any]:
    """A record as the gateway sends it: one bin calibrated (check failed, forced), bound and pick-tested."""
    return {
        "store_id": "s1",
        "gateway_id": "s1-gw",
        "generated_at": TS,
        "installers": ["li.wei"],
        "devices": [{"id": "tx1", "family": "modbus", "online": True}],
        "calibrations": {
            "A01": {
                "before": {"zero": 0.0, "span_g_per_unit": 1.0, "calibrated_at": None},
                "after": {"zero": 1000.0, "span_g_per_unit": 0.05, "calibrated_at": TS},
                "check": {
                    "mass_g": 700.0,
                    "measured_g": 712.0,
                    "error_g": 12.0,
                    "error_pct": 1.7143,
                    "tolerance_g": 5.0,
                    "ok": False,
                },
                "forced": True,
                "installer": "li.wei",
                "ts": TS,
            }
        },
        "bindings": {
            "A01": {
                "before": {"sku": "06901234567892", "unit_weight_g": 350.0},
                "after": {"sku": "07032069804988", "unit_weight_g": 355.0},
                "installer": "li.wei",
                "ts": TS,
            }
        },
        "tests": {
            "A01": {
                "state": "passed",
                "count_before": 6,
                "count_after": 5,
                "installer": "li.wei",
                "started_at": TS,
                "detail": "",
                "ts": TS,
            }
        },
    }


def test_commissioning_is_a_contract_type() -> None:
    assert EventType("commissioning") is EventType.COMMISSIONING
    assert EVENT_DATA_MODELS[EventType.COMMISSIONING] is Commissioning


def test_round_trip_through_a_batch_and_the_hub_parser() -> None:
    data = Commissioning.model_validate(record_data())
    assert data.failed_checks == 1
    assert data.tests_passed == 1
    event = Event(id="s1-gw:1", seq=1, type=EventType.COMMISSIONING, ts=TS, data=data.model_dump(mode="json"))
    payload = EventBatch(store_id="s1", gateway_id="s1-gw", first_seq=1, last_seq=1, events=[event]).to_json()
    parsed = parse_message(events_topic("s1"), payload)
    assert isinstance(parsed, BatchMessage)
    back = parsed.data[0]
    assert back == data
    assert isinstance(back, Commissioning)
    assert back.model_dump(mode="json") == Commissioning.model_validate(record_data()).model_dump(mode="json")


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        (("generated_at",), "2026-11-23 10:00", "naive time"),
        (("calibrations", "A01", "check", "error_g"), math.nan, "non-finite figure"),
        (("calibrations", "A01", "after", "span_g_per_unit"), 0.0, "span must be > 0"),
        (("calibrations", "A01", "frames"), [1, 2], "unknown field"),
        (("tests", "A01", "state"), "maybe", "unknown pick test state"),
        (("bindings", "A01", "after", "sku"), "", "empty sku"),
        (("store_id",), "", "empty store id"),
    ],
)
def test_rejections(path: tuple[str, ...], value: object, why: str) -> None:
    data = record_data()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError):
        Commissioning.model_validate(data)


def test_the_hub_quarantines_a_bad_record() -> None:
    data = record_data()
    data["tests"]["A01"]["state"] = "maybe"
    event = {"id": "s1-gw:1", "seq": 1, "type": "commissioning", "ts": TS, "data": data}
    payload = json.dumps(
        {
            "schema": "shelfgate.events/1",
            "store_id": "s1",
            "gateway_id": "s1-gw",
            "first_seq": 1,
            "last_seq": 1,
            "events": [event],
        }
    ).encode()
    with pytest.raises(PayloadRejected):
        parse_message(events_topic("s1"), payload)


def test_gateway_mapping_from_a_real_audit_trail(tmp_path: Path) -> None:
    """The entries the installer service appends (edge/installer.py), folded by `commissioning_record`."""
    cal = record_data()["calibrations"]["A01"]
    append_audit(
        tmp_path,
        {
            "kind": "calibration",
            "bin_id": "A01",
            "installer": "li.wei",
            "before": cal["before"],
            "after": cal["after"],
            "check": cal["check"],
            "forced": True,
        },
    )
    append_audit(
        tmp_path,
        {
            "kind": "binding",
            "bin_id": "A01",
            "installer": "zhang.min",
            "before": {"sku": "06901234567892", "unit_weight_g": 350.0},
            "after": {"sku": "07032069804988", "unit_weight_g": None},
        },
    )
    append_audit(
        tmp_path,
        {
            "kind": "pick_test",
            "bin_id": "A01",
            "installer": "li.wei",
            "state": "failed",
            "count_before": 6,
            "count_after": 4,
            "timeout_s": 60.0,
            "started_at": TS,
            "detail": "count changed by -2",
        },
    )
    devices = [{"device_id": "tx1", "family": "modbus", "online": False, "messages": 3, "counters": {}}]
    rec = commissioning_record("s1", "s1-gw", devices, read_audit(tmp_path)).as_dict()
    payload = commissioning_payload(rec)
    assert payload.store_id == "s1"
    assert payload.installers == ["li.wei", "zhang.min"]
    assert [d.model_dump() for d in payload.devices] == [{"id": "tx1", "family": "modbus", "online": False}]
    assert payload.calibrations["A01"].forced is True
    assert payload.calibrations["A01"].check is not None
    assert payload.calibrations["A01"].check.ok is False
    assert payload.bindings["A01"].after.sku == "07032069804988"
    assert payload.bindings["A01"].installer == "zhang.min"
    assert payload.tests["A01"].state == "failed"
    assert payload.tests["A01"].count_after == 4
    assert payload.failed_checks == 1
    assert payload.tests_passed == 0
    # The audit's own fields (kind, bin_id, timeout_s) stay local: the wire form is the contract's.
    assert "timeout_s" not in payload.model_dump()["tests"]["A01"]


def test_gateway_mapping_refuses_a_non_finite_check() -> None:
    rec = record_data()
    rec["devices"] = []
    rec["calibrations"]["A01"]["check"]["error_pct"] = math.inf
    with pytest.raises(ValidationError):
        commissioning_payload(rec)
