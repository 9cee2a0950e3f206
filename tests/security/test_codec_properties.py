"""Properties for the codecs and parsers that had none: NCI reply frames and commands, AIM-prefixed scans and
GS1 GTINs, M100 module-information frames, BLE MAC/key text and bind-key documents, and the contract models a
hub or gateway parses from the network.

Each codec: decoding arbitrary input raises nothing but its documented error type, and what the encoder
writes decodes back to the same value. (Modbus, MT-SICS, the M100 frame layer, SGTIN-96, BTHome adverts, the
LLRP simulator's walker and `cmd/` intake already have such properties next to their unit tests.)
"""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cloud_bridge.contract import Command, CommandResult, EventBatch, Heartbeat
from drivers.barcode.protocol import (
    ProtocolError as BarcodeProtocolError,
)
from drivers.barcode.protocol import (
    Terminator,
    decode_scan,
    decode_stream,
    encode_scan,
)
from drivers.ble.keys import BindKey, KeyFileError, parse_keys
from drivers.ble.protocol import ProtocolError as BleProtocolError
from drivers.ble.protocol import normalize_mac, parse_key_hex
from drivers.rfid.errors import ProtocolError as RfidProtocolError
from drivers.rfid.probe import InfoType, parse_module_info
from drivers.rfid.protocol import FrameType, decode_frame, encode_frame
from drivers.scale.protocol import NciReply, NciStatus, encode_nci_command, encode_nci_reply, parse_nci_frame
from drivers.scale.protocol import ProtocolError as ScaleProtocolError

# --- NCI (Avery Weigh-Tronix NCI / 3825 protocol: LF <weight><unit> CR LF <status> CR ETX) -----------------

STATUSES = st.builds(
    NciStatus,
    motion=st.booleans(),
    at_zero=st.booleans(),
    ram_error=st.booleans(),
    eeprom_error=st.booleans(),
    under_capacity=st.booleans(),
    over_capacity=st.booleans(),
    rom_error=st.booleans(),
    faulty_calibration=st.booleans(),
)
UNITS = st.text(alphabet=string.ascii_letters, min_size=1, max_size=3)


@given(
    status=STATUSES,
    weight_centi=st.none() | st.integers(min_value=-99_999, max_value=999_999),
    unit=UNITS,
)
def test_nci_weight_reply_round_trip(status: NciStatus, weight_centi: int | None, unit: str) -> None:
    weight = None if weight_centi is None else weight_centi / 100
    reply = NciReply(status=status, weight=weight, unit=unit)
    frame = encode_nci_reply(reply)
    assert frame.endswith(b"\x03")
    assert parse_nci_frame(frame[:-1]) == reply  # the parser takes the frame up to, not including, ETX


@given(status=STATUSES)
def test_nci_status_only_reply_round_trip(status: NciStatus) -> None:
    reply = NciReply(status=status)
    assert parse_nci_frame(encode_nci_reply(reply)[:-1]) == reply


@given(text=st.text(max_size=8))
def test_nci_command_encoder_refuses_with_its_protocol_error_only(text: str) -> None:
    try:
        wire = encode_nci_command(text)
    except ScaleProtocolError:
        return
    assert wire == text.encode("ascii") + b"\r"
    assert text.isascii()
    assert text.isupper()


@given(frame=st.binary(max_size=40))
def test_nci_frame_parser_raises_only_its_protocol_error(frame: bytes) -> None:
    try:
        reply = parse_nci_frame(frame)
    except ScaleProtocolError:
        return
    assert reply.error is not None or reply.status is not None


# --- barcode scans (AIM ISO/IEC 15424 identifier + data + terminator; GS1 General Specifications §7.9) -----


def gtin_check_digit(body: str) -> str:
    """GS1 mod-10 check digit of a GTIN body (GS1 General Specifications §7.9.1)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


@given(
    body=st.text(alphabet=string.digits, min_size=12, max_size=12).filter(lambda b: b[0] != "0"),
    terminator=st.sampled_from(list(Terminator)),
)
def test_an_ean13_scan_round_trips_to_its_gtin14(body: str, terminator: Terminator) -> None:
    ean13 = body + gtin_check_digit(body)
    decoded = decode_stream(encode_scan(ean13, "]E0", terminator))
    assert len(decoded) == 1
    scan = decoded[0]
    assert not isinstance(scan, Exception), scan
    assert getattr(scan, "gtin", None) == "0" + ean13
    assert scan.raw == "]E0" + ean13


@given(
    data=st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=60),
    symbology=st.none() | st.sampled_from(["]E0", "]C1", "]d2", "]Q1", "]e0", "]A0"]),
    terminator=st.sampled_from(list(Terminator)),
)
@settings(max_examples=300)
def test_any_encoded_scan_decodes_to_one_scan_or_one_refusal(
    data: str, symbology: str | None, terminator: Terminator
) -> None:
    decoded = decode_stream(encode_scan(data, symbology, terminator))
    assert len(decoded) <= 1  # an empty line (no data, no identifier) is skipped, never split or merged
    for item in decoded:
        assert (
            isinstance(item, BarcodeProtocolError) or item.raw.strip() in ((symbology or "") + data).strip()
        )


@given(text=st.text(max_size=80))
def test_decode_scan_on_any_text_raises_only_its_protocol_error(text: str) -> None:
    with contextlib.suppress(BarcodeProtocolError):
        decode_scan(text)


# --- M100 module information (get-module-information, command 0x03) ---------------------------------------


@given(
    info=st.sampled_from(list(InfoType)),
    text=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
)
def test_module_info_round_trip(info: InfoType, text: str) -> None:
    wire = encode_frame(FrameType.RESPONSE, 0x03, bytes((info,)) + text.encode("ascii"))
    assert parse_module_info(decode_frame(wire)) == (info, text)


@given(frame_type=st.integers(0, 2), command=st.integers(0, 0xFF), params=st.binary(max_size=30))
def test_module_info_parser_raises_only_its_protocol_error(
    frame_type: int, command: int, params: bytes
) -> None:
    frame = decode_frame(encode_frame(frame_type, command, params))
    try:
        info, text = parse_module_info(frame)
    except RfidProtocolError:
        return
    assert frame.command == 0x03
    assert text.isascii()
    assert info in InfoType


# --- BLE: MAC and key text, bind-key documents (drivers/ble/keys.py) ----------------------------------------


@given(text=st.text(max_size=24))
def test_normalize_mac_raises_only_its_protocol_error(text: str) -> None:
    try:
        mac = normalize_mac(text)
    except BleProtocolError:
        return
    assert normalize_mac(mac) == mac  # idempotent: stored MACs compare equal however they were typed
    assert len(mac) == 17


@given(octets=st.binary(min_size=6, max_size=6), sep=st.sampled_from([":", "-"]), upper=st.booleans())
def test_normalize_mac_round_trip(octets: bytes, sep: str, upper: bool) -> None:
    typed = sep.join(f"{b:02X}" if upper else f"{b:02x}" for b in octets)
    assert normalize_mac(typed) == ":".join(f"{b:02X}" for b in octets)


@given(text=st.text(max_size=40))
def test_parse_key_hex_raises_only_its_protocol_error(text: str) -> None:
    try:
        key = parse_key_hex(text)
    except BleProtocolError:
        return
    assert len(key) == 16


@given(key=st.binary(min_size=16, max_size=16))
def test_parse_key_hex_round_trip(key: bytes) -> None:
    assert parse_key_hex(key.hex()) == key


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=12,
)


MAC_LIKE = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
KEY_LIKE = st.binary(min_size=15, max_size=17).map(bytes.hex) | st.text(
    alphabet="0123456789abcdefgX ", max_size=34
)
KEY_DOCUMENTS = JSONISH | st.dictionaries(MAC_LIKE | st.text(max_size=20), KEY_LIKE | JSONISH, max_size=4)
"""Mostly near-misses (a MAC with a key of 15–17 bytes or stray characters), plus any JSON-like document."""


@given(document=KEY_DOCUMENTS)
def test_parse_keys_on_any_document_raises_only_key_file_error(document: object) -> None:
    try:
        keys = parse_keys(document)
    except KeyFileError as exc:
        reason = str(exc)
        assert "<keys>" in reason  # names the file, as a config error must
        return
    assert all(isinstance(k, BindKey) for k in keys.values())
    assert all(normalize_mac(mac) == mac for mac in keys)


# --- the wire contract (docs/wire-contract.md): what either end parses from the broker ----------------------


@pytest.mark.parametrize("model", [EventBatch, Heartbeat, Command, CommandResult])
def test_contract_models_on_arbitrary_bytes_raise_only_validation_error(model: type[EventBatch]) -> None:
    @settings(max_examples=150)
    @given(payload=st.binary(max_size=200) | JSONISH.map(lambda doc: repr(doc).encode()))
    def check(payload: bytes) -> None:
        with contextlib.suppress(ValidationError):
            model.model_validate_json(payload)

    check()


@given(
    command_id=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=128),
    args=st.dictionaries(st.text(max_size=10), JSONISH, max_size=4),
)
def test_command_round_trip(command_id: str, args: dict[str, object]) -> None:
    command = Command(id=command_id, issued_at="2026-11-23T16:00:00Z", args=args)
    assert Command.model_validate_json(command.model_dump_json()) == command
