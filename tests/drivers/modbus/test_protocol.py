"""The sans-IO Modbus codec: byte vectors from transmitter manuals, plus properties (STYLE.md rule 3)."""

from __future__ import annotations

import itertools
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.protocol import (
    MAX_READ_REGISTERS,
    Block,
    ChannelReading,
    ProtocolError,
    RegisterMap,
    StatusPoint,
    ValueType,
    WeightPoint,
    WordOrder,
    crc16_modbus,
    decode_channel,
    decode_value,
    encode_value,
    plan_blocks,
    plan_poll,
    register_image,
    rtu_check,
    rtu_frame,
    t35_s,
)

VECTORS_FILE = Path(__file__).resolve().parents[2] / "vectors" / "modbus_rtu_weight_transmitter.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
FRAMES: list[dict[str, Any]] = VECTORS["frames"]
FRAME_IDS = [f["id"] for f in FRAMES]

INT32_ABCD = RegisterMap(
    name="wt-int32-abcd",
    description="12-channel load-cell transmitter, int32 counts (ABCD), status word per channel",
    channels=12,
    weight=WeightPoint(0, ValueType.INT32, WordOrder.ABCD, stride=2, scale=1.0),
    status=StatusPoint(100, stride=1, stable_bit=0, overload_bit=1, fault_bit=2),
)
FLOAT32_CDAB = RegisterMap(
    name="wt-float32-cdab",
    description="10-channel load-cell transmitter, float32 counts (CDAB), status word per channel",
    channels=10,
    weight=WeightPoint(512, ValueType.FLOAT32, WordOrder.CDAB, stride=2, scale=1.0),
    status=StatusPoint(768, stride=1, stable_bit=5, overload_bit=6, fault_bit=7),
)


def _by_id(frame_id: str) -> dict[str, Any]:
    return next(f for f in FRAMES if f["id"] == frame_id)


# --- vectors ------------------------------------------------------------------------------------------------


def test_vector_file_is_complete_and_cites_sources() -> None:
    assert VECTORS["count"] == len(FRAMES) == 24
    for frame in FRAMES:
        src = frame["source"]
        assert src["repo"], frame["id"]
        assert src["path"], frame["id"]
        assert len(src["commit"]) == 40, frame["id"]


@pytest.mark.parametrize("frame", FRAMES, ids=FRAME_IDS)
def test_frame_crc(frame: dict[str, Any]) -> None:
    raw = bytes.fromhex(frame["frame_hex"])
    assert raw[-2:].hex() == frame["crc_le"]
    if frame["crc_ok"]:
        body = rtu_check(raw)
        assert body == raw[:-2]
        assert rtu_frame(body) == raw
        assert body[0] == frame["slave"]
        assert body[1] == frame["function"]
    else:
        with pytest.raises(ProtocolError, match="CRC mismatch"):
            rtu_check(raw)


def test_transposed_crc_in_doc_is_rejected_and_corrected_frame_accepted() -> None:
    bad = bytes.fromhex(_by_id("gain_cal_req_AS_PRINTED_IN_DOC")["frame_hex"])
    good = bytes.fromhex(_by_id("gain_cal_req_corrected")["frame_hex"])
    with pytest.raises(ProtocolError):
        rtu_check(bad)
    assert rtu_check(good) == bad[:-2] == good[:-2]
    crc = crc16_modbus(good[:-2])
    assert bytes((crc & 0xFF, crc >> 8)) == bytes.fromhex("7d16")


def _fc03_response_registers(raw: bytes) -> list[int]:
    """Cut the registers out of an FC03 response body: unit, 0x03, byte count, data (spec §6.3)."""
    body = rtu_check(raw)
    assert body[1] == 0x03
    byte_count = body[2]
    data = body[3:]
    assert len(data) == byte_count
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, byte_count, 2)]


FC03_RESPONSES = [f for f in FRAMES if f["function"] == 3 and "registers" in f]


@pytest.mark.parametrize("frame", FC03_RESPONSES, ids=[f["id"] for f in FC03_RESPONSES])
def test_fc03_response_decodes_to_documented_value(frame: dict[str, Any]) -> None:
    registers = _fc03_response_registers(bytes.fromhex(frame["frame_hex"]))
    assert registers == frame["registers"]
    if "int32_hi_word_first" in frame:
        assert decode_value(registers, ValueType.INT32, WordOrder.ABCD) == frame["int32_hi_word_first"]
        assert encode_value(frame["int32_hi_word_first"], ValueType.INT32, WordOrder.ABCD) == registers
    else:
        assert decode_value(registers, ValueType.UINT16) == frame["uint16"]


def test_fc03_vectors_include_the_negative_value() -> None:
    registers = _fc03_response_registers(bytes.fromhex(_by_id("read_net_resp")["frame_hex"]))
    assert decode_value(registers, ValueType.INT32, WordOrder.ABCD) == -15889
    # The same words read as unsigned are a huge positive count: the profile's type matters.
    assert decode_value(registers, ValueType.UINT32, WordOrder.ABCD) == 0xFFFFC1EF


FC03_REQUESTS = [f for f in FRAMES if f["function"] == 3 and "quantity" in f]


@pytest.mark.parametrize("frame", FC03_REQUESTS, ids=[f["id"] for f in FC03_REQUESTS])
def test_fc03_request_fields(frame: dict[str, Any]) -> None:
    body = rtu_check(bytes.fromhex(frame["frame_hex"]))
    unit, fc, start, quantity = struct.unpack(">BBHH", body)
    assert (unit, fc, start, quantity) == (frame["slave"], 3, frame["start_address"], frame["quantity"])


FC16_REQUESTS = [f for f in FRAMES if f["function"] == 16 and f["crc_ok"] and "registers" in f]


@pytest.mark.parametrize("frame", FC16_REQUESTS, ids=[f["id"] for f in FC16_REQUESTS])
def test_fc16_request_fields(frame: dict[str, Any]) -> None:
    body = rtu_check(bytes.fromhex(frame["frame_hex"]))
    _unit, _fc, start, quantity, byte_count = struct.unpack(">BBHHB", body[:7])
    registers = [int.from_bytes(body[7 + i : 9 + i], "big") for i in range(0, byte_count, 2)]
    assert (start, quantity, byte_count) == (frame["start_address"], frame["quantity"], 2 * frame["quantity"])
    assert registers == frame["registers"]


def _float_reference() -> list[tuple[WordOrder, list[int]]]:
    ref = VECTORS["float32_word_order_reference"]
    return [(WordOrder(label[:4]), [int(w, 16) for w in words]) for label, words in ref["registers"].items()]


@pytest.mark.parametrize(("order", "registers"), _float_reference(), ids=str)
def test_float32_word_order_reference(order: WordOrder, registers: list[int]) -> None:
    ref = VECTORS["float32_word_order_reference"]
    as_float32 = struct.unpack(">f", bytes.fromhex(ref["ieee754_hex"]))[0]
    assert decode_value(registers, ValueType.FLOAT32, order) == as_float32
    assert decode_value(registers, ValueType.FLOAT32, order) == pytest.approx(ref["value"], rel=1e-6)
    assert encode_value(ref["value"], ValueType.FLOAT32, order) == registers


def test_all_four_word_orders_are_distinct() -> None:
    assert len({tuple(words) for _, words in _float_reference()}) == 4


def test_t35_matches_domain_notes() -> None:
    assert t35_s(9600) == pytest.approx(0.003646, abs=1e-6)
    assert t35_s(115200) == 0.00175
    assert t35_s(9600, bits_per_char=11) > t35_s(9600)


# --- value properties ---------------------------------------------------------------------------------------

_VALUES = {
    ValueType.UINT16: st.integers(0, 0xFFFF),
    ValueType.INT16: st.integers(-0x8000, 0x7FFF),
    ValueType.UINT32: st.integers(0, 0xFFFF_FFFF),
    ValueType.INT32: st.integers(-0x8000_0000, 0x7FFF_FFFF),
    ValueType.FLOAT32: st.floats(width=32, allow_nan=False),
}


@pytest.mark.parametrize("order", list(WordOrder))
@pytest.mark.parametrize("value_type", list(ValueType))
@given(data=st.data())
def test_encode_decode_round_trip(value_type: ValueType, order: WordOrder, data: st.DataObject) -> None:
    value = data.draw(_VALUES[value_type])
    words = encode_value(value, value_type, order)
    assert len(words) == value_type.width
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode_value(words, value_type, order) == value


@pytest.mark.parametrize("order", list(WordOrder))
@pytest.mark.parametrize("value_type", list(ValueType))
@given(data=st.data())
def test_decode_encode_round_trip_on_words(
    value_type: ValueType, order: WordOrder, data: st.DataObject
) -> None:
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=value_type.width, max_size=value_type.width))
    value = decode_value(words, value_type, order)
    if math.isnan(value):  # a NaN's payload need not survive a trip through a Python float
        return
    assert encode_value(value, value_type, order) == words


@pytest.mark.parametrize(
    ("value", "value_type"),
    [(65536, ValueType.UINT16), (-1, ValueType.UINT16), (40000, ValueType.INT16), (2**32, ValueType.UINT32)],
)
def test_encode_out_of_range_raises_protocol_error(value: int, value_type: ValueType) -> None:
    with pytest.raises(ProtocolError):
        encode_value(value, value_type)


@given(words=st.lists(st.integers(-5, 0x1FFFF), max_size=3), value_type=st.sampled_from(list(ValueType)))
def test_decode_bad_words_only_raises_protocol_error(words: list[int], value_type: ValueType) -> None:
    try:
        decode_value(words, value_type)
    except ProtocolError:
        assert len(words) != value_type.width or any(not 0 <= w <= 0xFFFF for w in words)


# --- RTU framing properties ---------------------------------------------------------------------------------


@given(garbage=st.binary(max_size=300))
def test_rtu_check_on_garbage_only_raises_protocol_error(garbage: bytes) -> None:
    try:
        body = rtu_check(garbage)
    except ProtocolError:
        return
    assert rtu_frame(body) == garbage


@given(body=st.binary(min_size=2, max_size=256))
def test_rtu_frame_round_trip(body: bytes) -> None:
    assert rtu_check(rtu_frame(body)) == body


@given(body=st.binary(min_size=2, max_size=256), data=st.data())
def test_any_single_bit_flip_is_detected(body: bytes, data: st.DataObject) -> None:
    """CRC-16 detects every single-bit error, which is what `PtyNullModem.corrupt_next` injects."""
    frame = bytearray(rtu_frame(body))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProtocolError):
        rtu_check(bytes(frame))


# --- block planning -----------------------------------------------------------------------------------------


@st.composite
def _disjoint_spans(draw: st.DrawFn) -> tuple[list[tuple[int, int]], int, int]:
    """Register spans as a real map produces them: disjoint, in any order, each fitting one read."""
    max_block = draw(st.integers(2, MAX_READ_REGISTERS))
    max_gap = draw(st.integers(0, 30))
    spans: list[tuple[int, int]] = []
    cursor = draw(st.integers(0, 50))
    for _ in range(draw(st.integers(0, 40))):
        count = draw(st.integers(1, min(4, max_block)))
        spans.append((cursor, count))
        cursor += count + draw(st.integers(0, 40))
    return draw(st.permutations(spans)), max_gap, max_block


@given(case=_disjoint_spans())
def test_plan_blocks_properties(case: tuple[list[tuple[int, int]], int, int]) -> None:
    spans, max_gap, max_block = case
    blocks = plan_blocks(spans, max_gap=max_gap, max_block=max_block)
    # Sorted, non-overlapping, within the FC03 and configured limits.
    for a, b in itertools.pairwise(blocks):
        assert a.end <= b.start
    for block in blocks:
        assert 1 <= block.count <= min(max_block, MAX_READ_REGISTERS)
    # Every span lies inside exactly one block.
    for start, count in spans:
        holders = [b for b in blocks if b.start <= start and start + count <= b.end]
        assert len(holders) == 1, (start, count, blocks)
    # No block reads registers nobody asked for beyond max_gap in a row, and none starts/ends on a gap.
    for block in blocks:
        used = sorted((s, s + c) for s, c in spans if block.start <= s and s + c <= block.end)
        assert used[0][0] == block.start
        assert max(e for _, e in used) == block.end
        reach = used[0][1]
        for s, e in used[1:]:
            assert s - reach <= max_gap
            reach = max(reach, e)
    # Nothing was coalesced that the limits allowed to merge but left apart.
    for a, b in itertools.pairwise(blocks):
        assert b.start - a.end > max_gap or b.end - a.start > max_block


def test_plan_blocks_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_block"):
        plan_blocks([(0, 2)], max_block=126)
    with pytest.raises(ValueError, match="exceeds"):
        plan_blocks([(0, 10)], max_block=4)


def test_plan_poll_int32_profile() -> None:
    plan = plan_poll(INT32_ABCD, range(12))
    assert plan.blocks == (Block(0, 24), Block(100, 12))
    one = plan_poll(INT32_ABCD, range(12), max_gap=76)
    assert one.blocks == (Block(0, 112),)
    some = plan_poll(INT32_ABCD, [3, 4])
    assert some.blocks == (Block(6, 4), Block(103, 2))


def test_plan_poll_float32_profile() -> None:
    plan = plan_poll(FLOAT32_CDAB, range(10))
    assert plan.blocks == (Block(512, 20), Block(768, 10))


@pytest.mark.parametrize("register_map", [INT32_ABCD, FLOAT32_CDAB], ids=lambda m: m.name)
def test_profiles_match_the_yaml_files(register_map: RegisterMap) -> None:
    from edge.config import PROJECT_PROFILES, load_profile

    assert load_profile(PROJECT_PROFILES / f"{register_map.name}.yaml") == register_map


@pytest.mark.parametrize("register_map", [INT32_ABCD, FLOAT32_CDAB], ids=lambda m: m.name)
def test_plan_decode_round_trips_register_image(register_map: RegisterMap) -> None:
    readings = [
        ChannelReading(
            channel=ch, value=float(ch * 1000 - 3500), stable=ch % 2 == 0, overload=ch == 3, fault=ch == 5
        )
        for ch in range(register_map.channels)
    ]
    image = register_image(register_map, readings)
    plan = plan_poll(register_map, range(register_map.channels))
    words = [[image.get(a, 0) for a in range(b.start, b.end)] for b in plan.blocks]
    assert plan.decode(words) == readings


def test_plan_decode_rejects_short_block() -> None:
    plan = plan_poll(INT32_ABCD, [0])
    with pytest.raises(ProtocolError, match="expected"):
        plan.decode([[0]])
    with pytest.raises(ProtocolError, match="blocks"):
        plan.decode([])


@given(
    value_type=st.sampled_from(list(ValueType)),
    order=st.sampled_from(list(WordOrder)),
    data=st.data(),
)
def test_poll_plan_fast_decode_equals_reference_decoder(
    value_type: ValueType, order: WordOrder, data: st.DataObject
) -> None:
    """PollPlan.decode (word order resolved once per plan) must agree with decode_channel on any words."""
    width = value_type.width
    rmap = RegisterMap(
        name="prop",
        channels=6,
        weight=WeightPoint(address=10, value_type=value_type, word_order=order, stride=width + 1, scale=0.5),
        status=StatusPoint(address=40, stride=1, stable_bit=3, overload_bit=0, fault_bit=15),
    )
    channels = data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True))
    plan = plan_poll(rmap, channels, max_gap=data.draw(st.integers(0, 40)))
    block_words = [
        data.draw(st.lists(st.integers(0, 0xFFFF), min_size=b.count, max_size=b.count)) for b in plan.blocks
    ]
    image: dict[int, int] = {}
    for b, words in zip(plan.blocks, block_words, strict=True):
        image.update(zip(range(b.start, b.end), words, strict=True))
    fast = plan.decode(block_words)
    reference = [decode_channel(rmap, ch, image) for ch in sorted(channels)]
    for f, r in zip(fast, reference, strict=True):
        assert (f.channel, f.stable, f.overload, f.fault) == (r.channel, r.stable, r.overload, r.fault)
        assert f.value == r.value or (math.isnan(f.value) and math.isnan(r.value))
