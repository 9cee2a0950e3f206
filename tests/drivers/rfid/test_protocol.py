"""The sans-IO serial UHF frame codec: M100 vectors plus properties (STYLE.md rule 3)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.rfid.epc import encode_sgtin96
from drivers.rfid.protocol import (
    CMD_ERROR,
    CMD_SINGLE_INVENTORY,
    CMD_STOP_MULTI_INVENTORY,
    MAX_PARAMS_LEN,
    NEED_MORE,
    ChecksumError,
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    NeedMore,
    ProtocolError,
    TagCrcError,
    checksum,
    crc16_genibus,
    decode_frame,
    decode_m100,
    encode_frame,
    error_frame,
    multi_inventory,
    parse_error,
    parse_tag_notice,
    single_inventory,
    stop_multi_inventory,
    stop_response,
    tag_notice_frame,
)

VECTORS_FILE = Path(__file__).resolve().parents[2] / "vectors" / "rfid_llrp_and_serial_uhf.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
FRAMES: list[dict[str, Any]] = VECTORS["m100_frames"]
FRAME_IDS = [f["id"] for f in FRAMES]
TYPE_BY_NAME = {"command": FrameType.COMMAND, "response": FrameType.RESPONSE, "notice": FrameType.NOTICE}


def _by_id(frame_id: str) -> bytes:
    return bytes.fromhex(next(f for f in FRAMES if f["id"] == frame_id)["frame_hex"])


def _decode_stream(decoder: FrameDecoder) -> list[Frame | str]:
    """Every frame and error the decoder yields for what it holds, errors as their class name."""
    out: list[Frame | str] = []
    while True:
        try:
            event = decoder.next_event()
        except ProtocolError as exc:
            out.append(type(exc).__name__)
            continue
        if isinstance(event, NeedMore):
            return out
        out.append(event)


# --- vectors ------------------------------------------------------------------------------------------------


def test_vector_file_cites_sources() -> None:
    assert len(FRAMES) == 5
    for frame in FRAMES:
        assert frame["source"]["note"], frame["id"]
        assert frame["checksum_ok"] is True


@pytest.mark.parametrize("vector", FRAMES, ids=FRAME_IDS)
def test_vector_decodes_and_re_encodes(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["frame_hex"])
    frame = decode_frame(raw)
    assert frame.frame_type == TYPE_BY_NAME[vector["expected"]["type"]]
    assert frame.command == vector["expected"]["cmd"]
    assert raw[-2] == checksum(raw[1:-2])
    assert frame.encode() == raw


@pytest.mark.parametrize("vector", FRAMES, ids=FRAME_IDS)
def test_every_proper_prefix_needs_more(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["frame_hex"])
    for n in range(len(raw)):
        decoder = FrameDecoder()
        decoder.receive_data(raw[:n])
        assert decoder.next_event() is NEED_MORE, n
        with pytest.raises(FrameError, match=r"truncated|starts with"):
            decode_frame(raw[:n])


def test_byte_at_a_time_gives_the_same_frames() -> None:
    stream = b"".join(bytes.fromhex(f["frame_hex"]) for f in FRAMES)
    whole = FrameDecoder()
    whole.receive_data(stream)
    expected = _decode_stream(whole)
    assert len(expected) == len(FRAMES)
    trickle = FrameDecoder()
    got: list[Frame | str] = []
    for byte in stream:
        trickle.receive_data(bytes((byte,)))
        got.extend(_decode_stream(trickle))
    assert got == expected
    assert trickle.pending == 0
    assert trickle.skipped_bytes == 0


def test_command_builders_match_the_vectors() -> None:
    assert single_inventory() == _by_id("single_inventory_cmd")
    assert multi_inventory(10000) == _by_id("multi_inventory_cmd_10000")
    assert stop_multi_inventory() == _by_id("stop_multi_inventory_cmd")
    assert error_frame(0x15) == _by_id("no_tag_error")


def test_tag_notice_vector_fields_and_gen2_crc() -> None:
    vector = next(f for f in FRAMES if f["id"] == "tag_notice")["expected"]
    notice = parse_tag_notice(decode_frame(_by_id("tag_notice")))
    assert notice.rssi_dbm == vector["rssi_dbm"] == -55
    assert f"{notice.pc:04x}" == vector["pc"]
    assert notice.epc.hex() == vector["epc"]
    assert len(notice.epc) * 8 == vector["epc_bits_from_pc"]
    assert notice.crc is not None
    assert f"{notice.crc:04x}" == vector["epc_crc"]
    assert crc16_genibus(bytes.fromhex(vector["pc"] + vector["epc"])) == 0x3A76
    # Rebuilding the notice from its fields reproduces the vector byte for byte.
    assert tag_notice_frame(notice.epc, notice.rssi_dbm, pc=notice.pc) == _by_id("tag_notice")


def test_crc16_genibus_check_value() -> None:
    """The catalogue check value of CRC-16/GENIBUS over b"123456789" (reveng CRC catalogue)."""
    assert crc16_genibus(b"123456789") == 0xD64E


def test_no_tag_error_vector() -> None:
    frame = decode_frame(_by_id("no_tag_error"))
    assert (frame.frame_type, frame.command, parse_error(frame)) == (FrameType.RESPONSE, CMD_ERROR, 0x15)


def test_bad_crc_notice_is_a_tag_crc_error_and_the_stream_continues() -> None:
    raw = bytearray(_by_id("tag_notice"))
    raw[-4] ^= 0x01  # CRC low byte: the frame checksum must be recomputed for a line-clean frame
    raw[-2] = checksum(bytes(raw[1:-2]))
    frame = decode_frame(bytes(raw))  # the frame itself is fine
    with pytest.raises(TagCrcError):
        parse_tag_notice(frame)
    decoder = FrameDecoder()
    decoder.receive_data(bytes(raw) + _by_id("tag_notice"))
    frames = _decode_stream(decoder)
    assert len(frames) == 2  # both frames decode; the CRC is judged by whoever parses the notice


def test_notice_without_crc_is_accepted() -> None:
    epc = bytes.fromhex("30751feb705c5904e3d50d70")
    params = (-60).to_bytes(1, "big", signed=True) + (6 << 11).to_bytes(2, "big") + epc
    frame = Frame(FrameType.NOTICE, CMD_SINGLE_INVENTORY, params)
    notice = parse_tag_notice(frame, require_crc=False)
    assert (notice.rssi_dbm, notice.epc, notice.crc) == (-60, epc, None)
    with pytest.raises(FrameError, match="announces"):
        parse_tag_notice(frame)  # by default a CRC is required


def test_notice_whose_pc_disagrees_with_its_length_is_rejected() -> None:
    epc = bytes(12)
    params = b"\xc9" + (5 << 11).to_bytes(2, "big") + epc + b"\x00\x00"
    with pytest.raises(FrameError, match="announces"):
        parse_tag_notice(Frame(FrameType.NOTICE, CMD_SINGLE_INVENTORY, params))


def test_stop_response_bytes() -> None:
    assert stop_response() == bytes.fromhex("bb01280001002a7e")
    frame = decode_frame(stop_response())
    assert (frame.frame_type, frame.command, frame.params) == (
        FrameType.RESPONSE,
        CMD_STOP_MULTI_INVENTORY,
        b"\0",
    )


# --- resync and malformed frames ------------------------------------------------------------------------------


def test_garbage_before_frames_is_skipped_and_counted() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x11garbage" + single_inventory() + b"\x7e\x7e" + stop_multi_inventory())
    frames = _decode_stream(decoder)
    assert [f.command for f in frames if isinstance(f, Frame)] == [CMD_SINGLE_INVENTORY, 0x28]
    assert decoder.skipped_bytes == 11


def test_bad_checksum_raises_checksum_error_then_resyncs() -> None:
    bad = bytearray(_by_id("tag_notice"))
    bad[-2] ^= 0xFF
    decoder = FrameDecoder()
    decoder.receive_data(bytes(bad) + single_inventory())
    events = _decode_stream(decoder)
    assert events[0] == "ChecksumError"
    assert events[-1] == decode_frame(single_inventory())
    with pytest.raises(ChecksumError):
        decode_frame(bytes(bad))


def test_frame_hidden_behind_a_corrupted_length_is_recovered() -> None:
    """A 0xBB whose length field swallows the next frame: dropping only the 0xBB finds the real frame."""
    fake = bytes.fromhex("bb02220005")  # claims 5 params, then a real frame starts
    decoder = FrameDecoder()
    decoder.receive_data(fake + stop_multi_inventory())
    events = _decode_stream(decoder)
    assert events[-1] == decode_frame(stop_multi_inventory())
    assert events[0] in {"FrameError", "ChecksumError"}


def test_length_limit_rejects_at_once() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(bytes.fromhex("bb0222ffff") + single_inventory())
    events = _decode_stream(decoder)
    assert events == ["FrameError", decode_frame(single_inventory())]
    with pytest.raises(ProtocolError):
        encode_frame(FrameType.NOTICE, 0x22, bytes(MAX_PARAMS_LEN + 1))


def test_unknown_frame_type_is_rejected() -> None:
    with pytest.raises(FrameError, match="type"):
        decode_frame(bytes.fromhex("bb05220000277e"))


def test_discard_partial_recovers_a_half_frame_at_idle() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(_by_id("tag_notice")[:9])
    assert decoder.next_event() is NEED_MORE
    assert decoder.pending == 9
    while decoder.pending:
        decoder.discard_partial()
        assert _decode_stream(decoder) == []
    assert decoder.discard_partial() == 0


# --- decode_m100 (the CLI function) ----------------------------------------------------------------------------


def test_decode_m100_tag_notice() -> None:
    out = decode_m100("BB02220011C9340030751FEB705C5904E3D50D703A76EF7E")
    assert out["type"] == "notice"
    assert out["command"] == 0x22
    assert out["rssi_dbm"] == -55
    assert out["epc"] == "30751feb705c5904e3d50d70"
    assert out["epc_crc"] == "3a76"
    assert out["sgtin"]["filter"] == 3  # header 0x30: decoded, filter kept
    json.dumps(out)


def test_decode_m100_multi_inventory_and_error() -> None:
    assert decode_m100("bb00270003222710837e")["rounds"] == 10000
    err = decode_m100("bb01ff000115167e")
    assert (err["type"], err["command"], err["error_code"], err["rssi_dbm"], err["epc"]) == (
        "response",
        255,
        21,
        None,
        None,
    )
    assert "no tag" in err["error"]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "zz",
        "bb0022000022",
        "bb00220000237e",
        "bb00220000227e00",
        "bb02220011c9340030751feb705c5904e3d50d703a77f07e",
    ],
)
def test_decode_m100_rejects_with_protocol_error(bad: str) -> None:
    with pytest.raises(ProtocolError):
        decode_m100(bad)


# --- properties ---------------------------------------------------------------------------------------------

_frames = st.builds(
    Frame,
    frame_type=st.sampled_from(list(FrameType)).map(int),
    command=st.integers(0, 0xFF),
    params=st.binary(max_size=80),
)


@given(frame=_frames)
def test_frame_round_trip(frame: Frame) -> None:
    assert decode_frame(frame.encode()) == frame


@given(frames=st.lists(_frames, max_size=6), cuts=st.lists(st.integers(1, 40), max_size=20))
def test_any_chunking_gives_the_same_frames(frames: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(f.encode() for f in frames)
    decoder = FrameDecoder()
    got: list[Frame | str] = []
    pos = 0
    for n in [*cuts, len(stream)]:
        decoder.receive_data(stream[pos : pos + n])
        pos += n
        got.extend(_decode_stream(decoder))
    decoder.receive_data(stream[pos:])
    got.extend(_decode_stream(decoder))
    assert got == frames


@given(garbage=st.binary(max_size=300), frame=_frames)
def test_garbage_only_raises_protocol_error_and_a_following_frame_is_found(
    garbage: bytes, frame: Frame
) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(garbage)
    _decode_stream(decoder)  # only ProtocolError may escape next_event; anything else fails the test
    # Idle resync drops what is left of a half frame; then a clean frame decodes.
    while decoder.pending:
        decoder.discard_partial()
        _decode_stream(decoder)
    decoder.receive_data(frame.encode())
    assert _decode_stream(decoder) == [frame]


@given(garbage=st.binary(max_size=200))
def test_decode_frame_and_decode_m100_on_garbage_only_raise_protocol_error(garbage: bytes) -> None:
    for call in (lambda: decode_frame(garbage), lambda: decode_m100(garbage.hex())):
        with contextlib.suppress(ProtocolError):
            call()


@given(
    epc=st.binary(max_size=62).filter(lambda b: len(b) % 2 == 0),
    rssi=st.integers(-128, 127),
)
def test_tag_notice_round_trip(epc: bytes, rssi: int) -> None:
    notice = parse_tag_notice(decode_frame(tag_notice_frame(epc, rssi)))
    assert (notice.epc, notice.rssi_dbm) == (epc, rssi)
    assert notice.pc >> 11 == len(epc) // 2


@given(bit=st.integers(0, 8 * 14 - 1))
def test_any_single_bit_flip_in_pc_epc_is_a_crc_error(bit: int) -> None:
    epc = bytes.fromhex(encode_sgtin96(1, "0614141", "812345", 6789))
    frame = decode_frame(tag_notice_frame(epc, -50))
    params = bytearray(frame.params)
    params[1 + bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProtocolError):
        parse_tag_notice(Frame(frame.frame_type, frame.command, bytes(params)))
