"""Sans-IO intake rules: what is accepted, and every way a message is refused (with a stable code)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge.contract import (
    AlertData,
    AlertState,
    StockChanged,
    events_topic,
    health_topic,
    status_topic,
)
from hub.parse import (
    BatchMessage,
    CommandResultMessage,
    HeartbeatMessage,
    PayloadRejected,
    StatusMessage,
    parse_message,
)
from tests.hub.fakes import alert_event, batch, batch_dict, heartbeat, status, stock_event

GW = "s1-gw"


def test_valid_batch_is_parsed_with_typed_data() -> None:
    payload = batch("s1", GW, [stock_event(GW, 4, "A01", 9), alert_event(GW, 5, "al-1", AlertState.RAISED)])
    parsed = parse_message(events_topic("s1"), payload)
    assert isinstance(parsed, BatchMessage)
    assert parsed.store_id == "s1"
    assert (parsed.batch.first_seq, parsed.batch.last_seq) == (4, 5)
    assert isinstance(parsed.data[0], StockChanged)
    assert parsed.data[0].count == 9
    assert isinstance(parsed.data[1], AlertData)


def test_status_heartbeat_and_command_result_are_parsed() -> None:
    assert isinstance(parse_message(status_topic("s1"), status(GW, "online")), StatusMessage)
    assert isinstance(parse_message(health_topic("s1"), heartbeat(GW)), HeartbeatMessage)
    result = parse_message("shelfgate/v1/stores/s1/cmd-result", b'{"id": "c1", "ok": true}')
    assert isinstance(result, CommandResultMessage)
    assert result.result.ok


def _events_dict(**changes: Any) -> dict[str, Any]:
    data = batch_dict("s1", GW, [stock_event(GW, 1, "A01", 5), stock_event(GW, 2, "A01", 4)])
    data.update(changes)
    return data


def _reject(topic: str, payload: bytes) -> PayloadRejected:
    with pytest.raises(PayloadRejected) as caught:
        parse_message(topic, payload)
    return caught.value


def test_each_refusal_has_its_code() -> None:
    topic = events_topic("s1")
    cases: list[tuple[str, bytes, str]] = [
        ("bad-json", b"{not json", topic),
        ("empty", b"", topic),
        ("schema", json.dumps(_events_dict(schema="shelfgate.events/9")).encode(), topic),
        ("schema", json.dumps(_events_dict(events=[])).encode(), topic),
        ("store-mismatch", json.dumps(_events_dict(store_id="s2")).encode(), topic),
        ("seq-count", json.dumps(_events_dict(last_seq=3)).encode(), topic),
        ("foreign-topic", b"{}", "other/app/topic"),
        ("foreign-topic", b"{}", "shelfgate/v1/stores/s1/cmd/resend"),
    ]
    gap = _events_dict()
    gap["events"][1]["seq"] = 3
    gap["events"][1]["id"] = f"{GW}:3"
    cases.append(("seq-gap", json.dumps(gap).encode(), topic))
    wrong_id = _events_dict()
    wrong_id["events"][0]["id"] = "someone-else:1"
    cases.append(("id-mismatch", json.dumps(wrong_id).encode(), topic))
    bad_data = _events_dict()
    bad_data["events"][0]["data"]["count"] = -1
    cases.append(("schema", json.dumps(bad_data).encode(), topic))
    naive_ts = _events_dict()
    naive_ts["events"][0]["ts"] = "2026-11-23T10:00:00"
    cases.append(("bad-ts", json.dumps(naive_ts).encode(), topic))
    for code, payload, case_topic in cases:
        rejected = _reject(case_topic, payload)
        assert rejected.code == code, (code, rejected.reason)
        assert rejected.reason.startswith(f"{code}: ")


def test_refusal_details_point_at_the_field() -> None:
    bad_data = _events_dict()
    bad_data["events"][1]["data"]["count"] = -1
    rejected = _reject(events_topic("s1"), json.dumps(bad_data).encode())
    assert "events[1].data" in rejected.detail
    assert "count" in rejected.detail
    mismatch = _reject(events_topic("s1"), json.dumps(_events_dict(store_id="s2")).encode())
    assert "'s2'" in mismatch.detail
    assert "'s1'" in mismatch.detail


@given(st.binary(max_size=300), st.sampled_from(["events", "status", "health", "cmd-result"]))
def test_random_bytes_are_only_ever_refused(payload: bytes, leaf: str) -> None:
    """Nothing but PayloadRejected escapes, and noise is never mistaken for a consistency failure."""
    try:
        parse_message(f"shelfgate/v1/stores/s1/{leaf}", payload)
    except PayloadRejected as exc:
        code = exc.code
    else:
        code = "parsed"
    assert code in {"bad-json", "schema", "empty", "nul-char", "parsed"}


def test_a_nul_in_any_string_is_refused_but_an_escaped_backslash_is_not() -> None:
    """PostgreSQL text cannot hold U+0000; both engines must take the same input, so parse refuses it."""
    data = batch_dict("s1", GW, [stock_event(GW, 1, "A01", 5)])
    data["events"][0]["data"]["bin_id"] = "A\x0001"
    rejected = _reject(events_topic("s1"), json.dumps(data).encode())
    assert rejected.code == "nul-char"
    status_payload = json.loads(status(GW, "online"))
    status_payload["version"] = "0.1\x00"
    assert _reject(status_topic("s1"), json.dumps(status_payload).encode()).code == "nul-char"
    data["events"][0]["data"]["bin_id"] = "A\\u0000"  # the text backslash-u-0-0-0-0, not a NUL
    parsed = parse_message(events_topic("s1"), json.dumps(data).encode())
    assert isinstance(parsed, BatchMessage)
    assert isinstance(parsed.data[0], StockChanged)
    assert parsed.data[0].bin_id == "A\\u0000"
