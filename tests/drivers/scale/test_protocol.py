"""The sans-IO scale codecs: MT-SICS and NCI vectors from manuals and reference code, plus properties.

Vectors: `tests/vectors/scale_serial_protocols.json` (every entry keeps its `source`). Properties (STYLE.md
rule 3): every proper prefix of a line/frame decodes as "need more"; byte-at-a-time feeding gives the same
results as one chunk; encode → decode round-trips; random garbage only ever raises `ProtocolError`, and the
decoder resynchronises at the next line terminator.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.scale.protocol import (
    MT_STATUSES,
    NCI_BAD_COMMAND,
    NEED_MORE,
    MtCommand,
    MtResponse,
    MtSicsCommandDecoder,
    MtSicsDecoder,
    NciCommandDecoder,
    NciDecoder,
    NciReply,
    NciStatus,
    ProtocolError,
    decode_mtsics,
    decode_nci,
    encode_mtsics_command,
    encode_mtsics_response,
    encode_nci_command,
    encode_nci_reply,
    mtsics_weight_reply,
    parse_mtsics_response,
    parse_nci_frame,
    to_grams,
)

VECTORS_FILE = Path(__file__).resolve().parents[2] / "vectors" / "scale_serial_protocols.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
MT: list[dict[str, Any]] = VECTORS["mt_sics"]
OTHER: list[dict[str, Any]] = VECTORS["other_protocols"]
NCI = [v for v in OTHER if v["protocol"].startswith("NCI")]
FOREIGN = [v for v in OTHER if not v["protocol"].startswith("NCI")]


def _mt_id(v: dict[str, Any]) -> str:
    return f"{v['request'].strip()}->{v['response'].strip()}"


def _nci_bytes(v: dict[str, Any]) -> bytes:
    if "response_hex" in v:
        raw = bytes.fromhex(v["response_hex"])
        assert raw == ast.literal_eval(v["response_repr"]).encode("latin-1")
        return raw
    text: str = ast.literal_eval(v["response_repr"])
    return text.encode("latin-1")


def _nci_id(v: dict[str, Any]) -> str:
    return f"{v['request'].strip()}->{v['response_repr']}"


Result = Any
"""A decoded item, or the ProtocolError message it raised (for comparing chunkings)."""


def _drain(next_item: Callable[[], Any]) -> list[Result]:
    out: list[Result] = []
    while True:
        try:
            item = next_item()
        except ProtocolError as exc:
            out.append(f"ProtocolError: {exc}")
            continue
        if item is NEED_MORE:
            return out
        out.append(item)


def _mt_all(data: bytes) -> list[Result]:
    dec = MtSicsDecoder()
    dec.feed(data)
    return _drain(dec.next_response)


def _mt_bytewise(data: bytes) -> list[Result]:
    dec = MtSicsDecoder()
    out: list[Result] = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        out += _drain(dec.next_response)
    return out


def _nci_all(data: bytes) -> list[Result]:
    dec = NciDecoder()
    dec.feed(data)
    return _drain(dec.next_reply)


def _nci_bytewise(data: bytes) -> list[Result]:
    dec = NciDecoder()
    out: list[Result] = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        out += _drain(dec.next_reply)
    return out


# --- vector file -------------------------------------------------------------------------------------------


def test_vector_file_is_complete_and_cites_sources() -> None:
    assert VECTORS["mt_sics_count"] == len(MT) == 17
    assert len(NCI) == 5
    for v in [*MT, *OTHER]:
        sources = v["source"] if isinstance(v["source"], list) else [v["source"]]
        assert sources
        for src in sources:
            assert src.get("url") or src.get("repo") or src.get("note"), v
            if "repo" in src:
                assert len(src["commit"]) == 40


# --- MT-SICS vectors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", MT, ids=[_mt_id(v) for v in MT])
def test_mtsics_vector_decodes_as_documented(vector: dict[str, Any]) -> None:
    results = _mt_all(vector["response"].encode("ascii"))
    assert len(results) == 1
    resp = results[0]
    assert isinstance(resp, MtResponse)
    exp = vector["expected"]
    if "error" in exp:
        assert resp.error == exp["error"]
        assert resp.value is None
        assert resp.stable is None
        return
    assert resp.error is None
    assert resp.cmd == exp["cmd"]
    assert resp.status == exp["status"]
    assert resp.stable is exp["stable"]
    if "args" in exp:
        assert list(resp.args) == exp["args"]
    if "value" in exp:
        if resp.carries_weight:
            assert resp.value == exp["value"]
            assert resp.unit == exp["unit"]
        else:
            # I1 (level and versions) carries no weight: the vector's value/unit are the fields a generic
            # "last two tokens" parser picked. We keep every field and report no weight.
            assert resp.cmd == "I1"
            assert resp.value is None
            assert float(resp.args[-1]) == exp["value"]
            assert exp["unit"] in resp.args


@pytest.mark.parametrize("vector", MT, ids=[_mt_id(v) for v in MT])
def test_decode_mtsics_cli_function(vector: dict[str, Any]) -> None:
    out = decode_mtsics(vector["response"])
    assert set(out) == {"weight", "unit", "stable", "status"}
    exp = vector["expected"]
    assert out["stable"] is (exp.get("stable") is True)
    if "error" in exp:
        assert out["status"] == vector["response"].strip()
        assert out["weight"] is None
    else:
        assert out["status"] == exp["status"]
        if exp.get("stable") is not None:
            assert out["weight"] == exp["value"]
            assert out["unit"] == exp["unit"]
    # the same line typed without its CR LF, or with it spelled out, decodes the same
    bare = vector["response"].rstrip("\r\n")
    assert decode_mtsics(bare) == out
    assert decode_mtsics(bare + "\\r\\n") == out


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "S",
        "S X 1 g",
        "S S abc g",
        "S S 1.0",
        "S S 1.0 g extra",
        "s S 1 g",
        "S S nan g",
        "ES 1",
        'I4 A "x',
    ],
)
def test_decode_mtsics_rejects_malformed_lines(line: str) -> None:
    with pytest.raises(ProtocolError):
        decode_mtsics(line)


def test_decode_mtsics_rejects_two_lines_and_non_ascii() -> None:
    with pytest.raises(ProtocolError, match="one MT-SICS line"):
        decode_mtsics("S S 1 g\r\nS S 2 g")
    with pytest.raises(ProtocolError, match="ASCII"):
        decode_mtsics("S S 1 µg")


@pytest.mark.parametrize("vector", MT, ids=[_mt_id(v) for v in MT])
def test_mtsics_every_proper_prefix_needs_more(vector: dict[str, Any]) -> None:
    raw = vector["response"].encode("ascii")
    for cut in range(len(raw)):
        dec = MtSicsDecoder()
        dec.feed(raw[:cut])
        assert dec.next_response() is NEED_MORE, raw[:cut]
        dec.feed(raw[cut:])
        assert isinstance(dec.next_response(), MtResponse)
        assert dec.next_response() is NEED_MORE
        assert dec.buffered == 0


def test_mtsics_byte_at_a_time_matches_one_chunk() -> None:
    stream = b"".join(v["response"].encode("ascii") for v in MT)
    stream += b"\x00\xffjunk\r\nS S 1 g\n" + b"x" * 300 + b"\r\nS D   -2.5 kg\r\n"
    whole = _mt_all(stream)
    assert whole == _mt_bytewise(stream)
    responses = [r for r in whole if isinstance(r, MtResponse)]
    assert len(responses) == len(MT) + 1
    errors = [r for r in whole if isinstance(r, str)]
    assert len(errors) == 3  # junk line, LF without CR, over-long line
    assert responses[-1] == MtResponse("S", "D", ("-2.5", "kg"))


def test_mtsics_line_without_cr_and_overlong_line_are_dropped_then_resync() -> None:
    dec = MtSicsDecoder(max_line_bytes=32)
    dec.feed(b"S S 1 g\n")
    with pytest.raises(ProtocolError, match="without CR"):
        dec.next_response()
    dec.feed(b"A" * 100)
    with pytest.raises(ProtocolError, match="longer than 32 bytes"):
        dec.next_response()
    assert dec.buffered == 0  # the babble is not kept
    dec.feed(b"A" * 100 + b"\r\nS S   7.00 g\r\n")
    assert dec.next_response() == MtResponse("S", "S", ("7.00", "g"))
    assert dec.next_response() is NEED_MORE


def test_mtsics_encoders_reproduce_vector_bytes() -> None:
    assert encode_mtsics_response(mtsics_weight_reply("S", "S", 100.0, "g")) == MT[0]["response"].encode()
    assert encode_mtsics_response(MtResponse("S", "I")) == b"S I\r\n"
    assert encode_mtsics_response(MtResponse("ES", "")) == b"ES\r\n"
    assert encode_mtsics_response(MtResponse("Z", "A")) == b"Z A\r\n"
    assert encode_mtsics_response(MtResponse("I4", "A", ("0123456789",))) == b"I4 A 0123456789\r\n"
    assert encode_mtsics_response(MtResponse("@", "A", ("123456789",)), quote_strings=True) == (
        b'@ A "123456789"\r\n'
    )
    for v in MT:
        assert encode_mtsics_command(v["request"].strip()) == v["request"].encode()
    assert encode_mtsics_command("D", "HELLO WORLD") == b'D "HELLO WORLD"\r\n'
    with pytest.raises(ProtocolError):
        encode_mtsics_command("s")
    with pytest.raises(ProtocolError):
        encode_mtsics_command("D", 'say "hi"')


def test_mtsics_command_decoder_reads_commands() -> None:
    dec = MtSicsCommandDecoder()
    dec.feed(b'SI\r\n@\r\nD "HELLO WORLD"\r\n\xff\r\nTAC\r\n')
    assert _drain(dec.next_command) == [
        MtCommand("SI"),
        MtCommand("@"),
        MtCommand("D", ("HELLO WORLD",)),
        "ProtocolError: non-printable byte 0xff in line",
        MtCommand("TAC"),
    ]


# --- MT-SICS properties ------------------------------------------------------------------------------------

_cmd_ids = st.one_of(st.just("@"), st.from_regex(r"[A-Z][A-Z0-9]{0,7}", fullmatch=True))
_fields = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"'))
_units = st.sampled_from(["g", "kg", "mg", "lb", "oz", "ct", "%", "PCS"])


@st.composite
def _weight_replies(draw: st.DrawFn) -> MtResponse:
    cmd = draw(st.sampled_from(["S", "T", "TA", "TI"]))
    status = draw(st.sampled_from(["S", "D", "A"]))
    decimals = draw(st.integers(0, 5))
    counts = draw(st.integers(-(10**9), 10**9))
    return mtsics_weight_reply(cmd, status, counts / 10**decimals, draw(_units), decimals=decimals)


@st.composite
def _other_replies(draw: st.DrawFn) -> MtResponse:
    if draw(st.booleans()):
        return MtResponse(draw(st.sampled_from(["ES", "ET", "EL"])), "")
    cmd = draw(_cmd_ids)
    status = draw(st.sampled_from(sorted(MT_STATUSES)))
    if cmd in {"S", "T", "TA", "TI"} and status in {"S", "D", "A"}:
        status = "I"
    return MtResponse(cmd, status, tuple(draw(st.lists(_fields, max_size=5))))


@given(resp=st.one_of(_weight_replies(), _other_replies()), quote=st.booleans(), width=st.integers(0, 14))
def test_mtsics_response_round_trip(resp: MtResponse, quote: bool, width: int) -> None:
    raw = encode_mtsics_response(resp, value_width=width, quote_strings=quote)
    assert _mt_all(raw) == [resp]
    assert _mt_bytewise(raw) == [resp]


@given(resp=_weight_replies())
def test_mtsics_weight_value_survives_formatting(resp: MtResponse) -> None:
    decoded = parse_mtsics_response(encode_mtsics_response(resp).decode("ascii").rstrip("\r\n"))
    assert decoded.value == float(resp.args[0])
    assert decoded.stable is {"S": True, "D": False, "A": None}[resp.status]


@given(cmd=_cmd_ids, args=st.lists(_fields, max_size=4))
def test_mtsics_command_round_trip(cmd: str, args: list[str]) -> None:
    dec = MtSicsCommandDecoder()
    dec.feed(encode_mtsics_command(cmd, *args))
    assert dec.next_command() == MtCommand(cmd, tuple(args))


@given(garbage=st.binary(max_size=600))
def test_mtsics_garbage_only_raises_protocol_error_and_resyncs(garbage: bytes) -> None:
    dec = MtSicsDecoder()
    dec.feed(garbage)
    _drain(dec.next_response)  # anything but ProtocolError propagates and fails the test
    assert dec.buffered < 256
    # after a line terminator the decoder is back in step
    dec.feed(b"\r\nS S   42.0 g\r\n")
    assert _drain(dec.next_response)[-1] == MtResponse("S", "S", ("42.0", "g"))


@given(text=st.text(max_size=80))
def test_decode_mtsics_on_any_text_only_raises_protocol_error(text: str) -> None:
    try:
        out = decode_mtsics(text)
    except ProtocolError:
        return
    assert set(out) == {"weight", "unit", "stable", "status"}


# --- NCI ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", NCI, ids=[_nci_id(v) for v in NCI])
def test_nci_vector_decodes_as_documented(vector: dict[str, Any]) -> None:
    raw = _nci_bytes(vector)
    results = _nci_all(raw)
    assert len(results) == 1
    reply = results[0]
    assert isinstance(reply, NciReply)
    exp = vector["expected"]
    if "error" in exp:
        assert reply.error == exp["error"] == NCI_BAD_COMMAND
        assert reply.status is None
        return
    assert reply.status is not None
    assert reply.status.as_dict() == exp["status"]
    assert reply.weight == exp.get("weight")
    assert reply.unit == exp.get("unit")
    assert reply.stable is not exp["status"]["motion"]


@pytest.mark.parametrize("vector", NCI, ids=[_nci_id(v) for v in NCI])
def test_decode_nci_cli_function(vector: dict[str, Any]) -> None:
    hex_frame = _nci_bytes(vector).hex()
    exp = vector["expected"]
    if "error" in exp:
        with pytest.raises(ProtocolError, match="bad command"):
            decode_nci(hex_frame)
        return
    out = decode_nci(hex_frame)
    assert set(out) == {"weight", "unit", "stable", "status"}
    assert out["status"] == exp["status"]
    assert out["weight"] == exp.get("weight")
    assert out["unit"] == exp.get("unit")
    assert out["stable"] is not exp["status"]["motion"]
    assert decode_nci(" ".join(hex_frame[i : i + 2] for i in range(0, len(hex_frame), 2))) == out


@pytest.mark.parametrize(
    "text", ["", "zz", "0a", "0a2020312e32356c620d0a30300d", "0a3f0d030a3f0d03", "0a30410d03"]
)
def test_decode_nci_rejects_malformed_input(text: str) -> None:
    with pytest.raises(ProtocolError):
        decode_nci(text)


@pytest.mark.parametrize("vector", NCI, ids=[_nci_id(v) for v in NCI])
def test_nci_every_proper_prefix_needs_more(vector: dict[str, Any]) -> None:
    raw = _nci_bytes(vector)
    for cut in range(len(raw)):
        dec = NciDecoder()
        dec.feed(raw[:cut])
        assert dec.next_reply() is NEED_MORE
        dec.feed(raw[cut:])
        assert isinstance(dec.next_reply(), NciReply)
        assert dec.buffered == 0


def test_nci_encoder_reproduces_vector_bytes() -> None:
    for vector in NCI:
        raw = _nci_bytes(vector)
        reply = parse_nci_frame(raw[:-1])
        assert encode_nci_reply(reply, width=6) == raw
        assert encode_nci_command(vector["request"].strip()) == vector["request"].encode()


def test_nci_byte_at_a_time_matches_one_chunk() -> None:
    stream = (
        b"".join(_nci_bytes(v) for v in NCI) + b"junk\x03\n  1.00kg\r\n\x40\x30\r\x03\n 12.5 g\r\n01\r\x03"
    )
    whole = _nci_all(stream)
    assert whole == _nci_bytewise(stream)
    assert [isinstance(r, str) for r in whole] == [False] * 5 + [True, True, False]
    last = whole[-1]
    assert isinstance(last, NciReply)
    assert (last.weight, last.unit) == (12.5, "g")
    assert last.status == NciStatus(under_capacity=True)


def test_nci_over_capacity_placeholder_and_third_status_byte() -> None:
    reply = parse_nci_frame(b"\n^^^^^^^lb\r\n02\r")
    assert reply.weight is None
    assert reply.unit == "lb"
    assert reply.status == NciStatus(over_capacity=True)
    three = parse_nci_frame(b"\n  1.25lb\r\n000\r")
    assert three.status == NciStatus()
    with pytest.raises(ProtocolError, match="fixed bits"):
        parse_nci_frame(b"\n  1.25lb\r\n0@\r")
    assert encode_nci_reply(NciReply(status=NciStatus(over_capacity=True), unit="lb")) == (
        b"\n^^^^^^^lb\r\n02\r\x03"
    )


def test_nci_command_decoder() -> None:
    dec = NciCommandDecoder()
    dec.feed(b"W\r\nS\rZ\rX\r\r\x01\r")
    assert _drain(dec.next_command) == [
        "W",
        "S",
        "Z",
        "X",
        "ProtocolError: empty NCI command",
        "ProtocolError: non-printable byte 0x01 in line",
    ]


@given(
    flags=st.lists(st.booleans(), min_size=8, max_size=8),
    counts=st.one_of(st.none(), st.integers(-(10**6), 10**7)),
    unit=st.sampled_from(["lb", "kg", "g", "oz"]),
    width=st.integers(0, 10),
)
def test_nci_reply_round_trip(flags: list[bool], counts: int | None, unit: str, width: int) -> None:
    status = NciStatus(*flags)
    assert NciStatus.from_bytes(status.to_bytes()) == status
    reply = NciReply(status=status, weight=None if counts is None else counts / 100, unit=unit)
    raw = encode_nci_reply(reply, width=width or 1)
    assert _nci_all(raw) == [reply]
    assert _nci_bytewise(raw) == [reply]


@given(garbage=st.binary(max_size=300))
def test_nci_garbage_only_raises_protocol_error_and_resyncs(garbage: bytes) -> None:
    dec = NciDecoder()
    dec.feed(garbage)
    _drain(dec.next_reply)
    dec.feed(b"\x03\n  2.00lb\r\n00\r\x03")
    last = _drain(dec.next_reply)[-1]
    assert isinstance(last, NciReply)
    assert last.weight == 2.0


@given(text=st.text(max_size=80))
def test_decode_nci_on_any_text_only_raises_protocol_error(text: str) -> None:
    try:
        out = decode_nci(text)
    except ProtocolError:
        return
    assert set(out) == {"weight", "unit", "stable", "status"}


# --- other protocols in the vector file ---------------------------------------------------------------------


@pytest.mark.parametrize("vector", FOREIGN, ids=[v["protocol"] for v in FOREIGN])
def test_other_protocols_never_decode_as_a_weight(vector: dict[str, Any]) -> None:
    """Toledo 8213, CAS, Sartorius SBI and USB HID POS are not implemented: a scale set to one of them must
    show up as garbage on an MT-SICS or NCI line, never as a plausible weight."""
    raw = (
        bytes.fromhex(vector["report_hex"])
        if "report_hex" in vector
        else ast.literal_eval(vector["response_repr"]).encode("latin-1")
    )
    for result in [*_mt_all(raw + b"\r\n"), *_nci_all(raw + b"\x03")]:
        assert isinstance(result, str), result
        assert result.startswith("ProtocolError")


def test_to_grams() -> None:
    assert to_grams(1.25, "lb") == pytest.approx(566.9904625)
    assert to_grams(2.5, "kg") == 2500.0
    assert to_grams(100.0, "g") == 100.0
    assert to_grams(3.0, "PCS") is None
