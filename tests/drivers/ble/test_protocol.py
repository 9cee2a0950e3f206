"""The BTHome v2 codec: every recorded vector, the AES-CCM encoder against the vectors, and properties.

Adverts are datagrams, so the stream properties of the other codecs become: every truncation of a vector
either decodes or raises `ProtocolError`, and random bytes only ever raise `ProtocolError` (STYLE.md rule 3).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bthome_ble import BTHomeBluetoothDeviceData
from habluetooth import BluetoothServiceInfoBleak
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ble.protocol import (
    BTHOME_SERVICE_UUID,
    LB_IN_KG,
    AdvInfo,
    BTHomeAdvert,
    DecryptionFailed,
    KeyRequired,
    PacketFilter,
    PlaintextRejected,
    ProtocolError,
    UnsupportedVersion,
    build_service_data,
    decode_bthome,
    encode_objects,
    nonce,
    normalize_mac,
    parse_advert,
    parse_key_hex,
)

VECTORS_FILE = Path(__file__).resolve().parents[2] / "vectors" / "bthome_v2.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
ALL: list[dict[str, Any]] = VECTORS["vectors"]
ADVERTS = [v for v in ALL if "service_data_hex" in v]
ENCRYPTION_EXAMPLES = [v for v in ALL if "plaintext_objects_hex" in v]

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC = "54:48:E6:8F:80:A5"

# Independent of the module under test: how each unit seen in the vectors becomes a name suffix.
UNIT_SUFFIX = {
    "%": "pct",
    "°C": "c",
    "kg": "kg",
    "lb": "lb",
    "mbar": "mbar",
    "lx": "lx",
    "kWh": "kwh",
    "W": "w",
    "V": "v",
    "A": "a",
    "µg/m³": "ug_m3",
    "ppm": "ppm",
    "mm": "mm",
    "m": "m",
    "s": "s",
    "m/s": "m_s",
    "m/s²": "m_s2",
    "L": "l",
    "mL": "ml",
    "m³": "m3",
    "m³/h": "m3_h",
    "°": "deg",
    "°/s": "deg_s",
    "µS/cm": "us_cm",
    "rpm": "rpm",
}


def _by_id(vector_id: str) -> dict[str, Any]:
    return next(v for v in ALL if v["id"] == vector_id)


def _expected_measurements(vector: dict[str, Any]) -> dict[str, Any]:
    units: dict[str, str] = vector.get("expected_units", {})
    out: dict[str, Any] = {}
    for key, value in vector["expected_values"].items():
        if key == "packet_id":
            continue
        if isinstance(value, bool) or units.get(key) is None:
            out[key] = value
        else:
            out[f"{key}_{UNIT_SUFFIX[units[key]]}"] = value
    for key, event in vector.get("expected_events", {}).items():
        if isinstance(event, str):
            out[f"event_{key}"] = event
        else:
            out[f"event_{key}"] = event["event_type"]
            for prop, prop_value in event["event_properties"].items():
                out[f"event_{key}_{prop}"] = prop_value
    return out


def test_vectors_file_is_complete_and_cited() -> None:
    assert VECTORS["count"] == len(ALL) == 86
    for vector in ALL:
        assert vector["source"]["repo"] == "Bluetooth-Devices/bthome-ble", vector["id"]
        assert vector["source"]["commit"], vector["id"]


@pytest.mark.parametrize("vector", ADVERTS, ids=[v["id"] for v in ADVERTS])
def test_every_advert_vector(vector: dict[str, Any]) -> None:
    """Each recorded advert decodes to the values bthome-ble's own tests expect — or to a named refusal."""
    key_hex = vector["bindkey_hex"]

    def call() -> dict[str, object]:
        return decode_bthome(vector["service_data_hex"], key_hex=key_hex, mac=vector["ble_address"])

    supported = vector["expected_supported"]
    if not supported and not vector["expected_encrypted"] and key_hex:
        with pytest.raises(PlaintextRejected):
            call()
        return
    if not supported:
        with pytest.raises(UnsupportedVersion):
            call()
        return
    if vector["expected_encrypted"] and key_hex is None:
        with pytest.raises(KeyRequired, match="--key and --mac needed"):
            call()
        return
    if vector["expected_encrypted"] and not vector["expected_values"]:
        with pytest.raises(ProtocolError) as info:  # a wrong key, or too short to hold counter + MIC
            call()
        assert "\n" not in str(info.value)
        return
    result = call()
    assert set(result) == {"measurements", "encrypted", "packet_id"}
    assert result["encrypted"] is vector["expected_encrypted"]
    assert result["packet_id"] == vector["expected_values"].get("packet_id")
    assert result["measurements"] == _expected_measurements(vector)
    json.dumps(result)  # JSON-ready


def test_mass_vectors_give_kilograms() -> None:
    kg = parse_advert(bytes.fromhex(_by_id("bthome_mass_kilograms")["service_data_hex"]))
    assert kg.mass_kg == pytest.approx(80.3)
    lb = parse_advert(bytes.fromhex(_by_id("bthome_mass_pounds")["service_data_hex"]))
    assert lb.measurements == {"mass_lb": 74.86}
    assert lb.mass_kg == pytest.approx(74.86 * LB_IN_KG)


def test_typed_fields_of_a_shelly_advert() -> None:
    advert = parse_advert(
        bytes.fromhex(_by_id("bthome_packet_id_temperature_humidity_battery")["service_data_hex"])
    )
    assert (advert.packet_id, advert.battery_pct, advert.temperature_c) == (9, 93, 23.97)
    assert advert.mass_kg is None
    assert advert.encrypted is False


def test_wrong_key_is_a_decryption_failure_not_a_crash() -> None:
    vector = _by_id("bindkey_wrong")
    with pytest.raises(DecryptionFailed):
        parse_advert(
            bytes.fromhex(vector["service_data_hex"]),
            mac=vector["ble_address"],
            key=bytes.fromhex(vector["bindkey_hex"]),
        )


def test_encrypted_advert_needs_the_mac_unless_it_carries_one() -> None:
    plain = _by_id("bindkey_correct")
    with pytest.raises(KeyRequired, match="MAC"):
        parse_advert(bytes.fromhex(plain["service_data_hex"]), key=KEY)
    carried = _by_id("bthome_with_mac_encrypted")
    advert = parse_advert(bytes.fromhex(carried["service_data_hex"]), key=KEY)
    assert advert.mac == MAC
    assert advert.temperature_c == 25.06


def test_decode_accepts_the_uuid_prefix_and_rejects_bad_input() -> None:
    assert decode_bthome("d2fc 40065e1f")["measurements"] == {"mass_kg": 80.3}
    with pytest.raises(ProtocolError, match="hex"):
        decode_bthome("40zz")
    with pytest.raises(ProtocolError, match="empty"):
        decode_bthome("")
    with pytest.raises(ProtocolError, match="32 hex digits"):
        decode_bthome("40065e1f", key_hex="abcd")


# --- the encoder against the recorded encryption examples --------------------------------------------------


@pytest.mark.parametrize("vector", ENCRYPTION_EXAMPLES, ids=[v["id"] for v in ENCRYPTION_EXAMPLES])
def test_encoder_reproduces_the_encryption_examples(vector: dict[str, Any]) -> None:
    counter = int.from_bytes(bytes.fromhex(vector["counter_hex"]), "little")
    mac = vector["mac_hex"]
    adv_info = int(vector["adv_info_hex"], 16)
    assert nonce(mac, adv_info, counter).hex() == vector["nonce_hex"]
    data = build_service_data(
        bytes.fromhex(vector["plaintext_objects_hex"]),
        key=bytes.fromhex(vector["bindkey_hex"]),
        mac=mac,
        counter=counter,
    )
    assert data.hex() == vector["expected_service_data_hex"]
    decoded = decode_bthome(data.hex(), key_hex=vector["bindkey_hex"], mac=mac)
    assert decoded["encrypted"] is True
    assert decoded["measurements"] == _expected_measurements({**vector, "expected_units": _units_of(vector)})


def _units_of(vector: dict[str, Any]) -> dict[str, str]:
    return {"temperature": "°C", "humidity": "%"} if "temperature" in vector["expected_values"] else {}


def _bthome_ble_decrypts(data: bytes, mac: str, key: bytes) -> dict[str, Any]:
    """Feed our encoder's output straight to bthome-ble: an oracle independent of our decode path."""
    parser = BTHomeBluetoothDeviceData(bindkey=key)
    info = BluetoothServiceInfoBleak(
        mac,
        mac,
        -60,
        {},
        {BTHOME_SERVICE_UUID: data},
        [],
        "t",
        BLEDevice(mac, None, None),
        None,
        False,
        0.0,
        None,
    )
    update = parser.update(info)
    assert parser.bindkey_verified
    return {k.key: v.native_value for k, v in update.entity_values.items()}


# --- properties --------------------------------------------------------------------------------------------

centi_mass = st.integers(min_value=0, max_value=0xFFFF)
centi_temp = st.integers(min_value=-0x8000, max_value=0x7FFF)
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02X}" for x in b))


@settings(max_examples=150, deadline=None)
@given(
    masses=st.lists(centi_mass, min_size=1, max_size=3),
    battery=st.integers(0, 100),
    temp=centi_temp,
    packet_id=st.integers(0, 255),
    key=st.one_of(st.none(), st.binary(min_size=16, max_size=16)),
    mac=macs,
    counter=st.integers(0, 2**32 - 1),
    include_mac=st.booleans(),
)
def test_round_trip(  # noqa: PLR0917 - hypothesis passes one argument per strategy
    masses: list[int],
    battery: int,
    temp: int,
    packet_id: int,
    key: bytes | None,
    mac: str,
    counter: int,
    include_mac: bool,
) -> None:
    # 27 bytes of service data: adv_info, [MAC], packet id + battery + temperature (7), [counter + MIC (8)]
    room_for_masses = (27 - 1 - (6 if include_mac else 0) - 7 - (8 if key is not None else 0)) // 3
    masses = masses[:room_for_masses]
    objects = encode_objects(
        packet_id=packet_id,
        battery_pct=battery,
        temperature_c=temp / 100,
        masses_kg=[m / 100 for m in masses],
    )
    data = build_service_data(objects, key=key, mac=mac, counter=counter, include_mac=include_mac)
    advert = parse_advert(data, mac=mac, key=key)
    assert advert.encrypted is (key is not None)
    assert advert.counter == (counter if key is not None else None)
    assert advert.packet_id == packet_id
    assert advert.battery_pct == battery
    assert advert.temperature_c is not None
    assert round(advert.temperature_c * 100) == temp
    assert [round(m * 100) for m in advert.masses_kg] == masses
    if include_mac:
        assert advert.mac == mac
    if key is not None:
        oracle = _bthome_ble_decrypts(data, mac, key)
        assert oracle["packet_id"] == packet_id
        assert math.isclose(float(oracle["temperature"]), temp / 100, abs_tol=0.005)


@settings(max_examples=60, deadline=None)
@given(mass=centi_mass, key=st.binary(min_size=16, max_size=16), other=st.binary(min_size=16, max_size=16))
def test_any_other_key_fails_and_plaintext_is_refused(mass: int, key: bytes, other: bytes) -> None:
    objects = encode_objects(masses_kg=[mass / 100])
    sealed = build_service_data(objects, key=key, mac=MAC, counter=7)
    if other != key:
        with pytest.raises(DecryptionFailed):
            parse_advert(sealed, mac=MAC, key=other)
    with pytest.raises(PlaintextRejected):
        parse_advert(build_service_data(objects), mac=MAC, key=key)


@pytest.mark.parametrize("vector", ADVERTS, ids=[v["id"] for v in ADVERTS])
def test_every_truncation_decodes_or_raises_protocol_error(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["service_data_hex"])
    key = bytes.fromhex(vector["bindkey_hex"]) if vector["bindkey_hex"] else None
    outcomes = set()
    for end in range(len(data)):
        try:
            parse_advert(data[:end], mac=vector["ble_address"], key=key)
            outcomes.add("ok")
        except ProtocolError:
            outcomes.add("error")
    assert outcomes <= {"ok", "error"}
    with pytest.raises(ProtocolError):
        parse_advert(data[:0])


v2_adverts = st.tuples(st.integers(0x40, 0x47), st.binary(max_size=30)).map(lambda t: bytes([t[0]]) + t[1])


@settings(max_examples=400, deadline=None)
@given(data=st.one_of(st.binary(max_size=40), v2_adverts), keyed=st.booleans())
def test_garbage_only_raises_protocol_error(data: bytes, keyed: bool) -> None:
    try:
        advert = parse_advert(data, mac=MAC, key=KEY if keyed else None)
    except ProtocolError:
        return
    assert isinstance(advert, BTHomeAdvert)
    json.dumps(dict(advert.measurements))


@given(byte=st.integers(0, 255))
def test_adv_info_round_trip(byte: int) -> None:
    info = AdvInfo.parse(byte)
    assert info.to_byte() == byte & 0b1110_0111


def test_encoder_refuses_what_does_not_fit() -> None:
    with pytest.raises(ProtocolError, match="mass"):
        encode_objects(masses_kg=[655.36])
    with pytest.raises(ProtocolError, match="battery"):
        encode_objects(battery_pct=101)
    with pytest.raises(ProtocolError, match="legacy advert"):
        build_service_data(encode_objects(masses_kg=[1.0] * 9), key=KEY, mac=MAC)
    with pytest.raises(ProtocolError, match="MAC"):
        build_service_data(b"\x06\x01\x00", key=KEY)


# --- de-duplication ----------------------------------------------------------------------------------------


def _advert(packet_id: int | None = None, counter: int | None = None) -> BTHomeAdvert:
    return BTHomeAdvert(
        mac=MAC,
        encrypted=counter is not None,
        trigger_based=False,
        packet_id=packet_id,
        counter=counter,
        measurements={},
    )


def test_packet_id_repeats_are_duplicates_within_the_window() -> None:
    f = PacketFilter(window_s=4.0)
    assert f.classify(_advert(packet_id=9), 0.0) == "new"
    assert f.classify(_advert(packet_id=9), 0.1) == "duplicate"
    assert f.classify(_advert(packet_id=8), 0.2) == "duplicate"  # a late copy
    assert f.classify(_advert(packet_id=10), 0.3) == "new"
    assert (
        f.classify(_advert(packet_id=10), 10.0) == "new"
    )  # after a quiet spell: the device may have rebooted


def test_packet_id_wraps_at_256() -> None:
    f = PacketFilter()
    assert f.classify(_advert(packet_id=255), 0.0) == "new"
    assert f.classify(_advert(packet_id=0), 0.1) == "new"
    assert f.classify(_advert(packet_id=255), 0.2) == "duplicate"


@given(start=st.integers(0, 255), steps=st.lists(st.integers(1, 63), min_size=1, max_size=20))
def test_advancing_packet_ids_are_always_new(start: int, steps: list[int]) -> None:
    f = PacketFilter()
    assert f.classify(_advert(packet_id=start), 0.0) == "new"
    pid = start
    for i, step in enumerate(steps, start=1):
        pid = (pid + step) % 256
        assert f.classify(_advert(packet_id=pid), i * 0.01) == "new"
        assert f.classify(_advert(packet_id=pid), i * 0.01) == "duplicate"


def test_encryption_counter_repeats_and_replays() -> None:
    f = PacketFilter()
    assert f.classify(_advert(counter=5000), 0.0) == "new"
    assert f.classify(_advert(counter=5000), 100.0) == "duplicate"  # same nonce: the same advert, at any age
    assert f.classify(_advert(counter=4000), 100.1) == "replay"
    assert f.classify(_advert(counter=3), 100.2) == "new"  # restarted device
    assert f.classify(_advert(packet_id=1), 100.3) == "new"  # plaintext packet id starts its own history


def test_no_id_no_counter_is_never_a_duplicate() -> None:
    f = PacketFilter()
    assert [f.classify(_advert(), 0.0) for _ in range(3)] == ["new", "new", "new"]


# --- small helpers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a4c1388d18b2", "A4-C1-38-8D-18-B2", "a4:c1:38:8d:18:b2"])
def test_normalize_mac(text: str) -> None:
    assert normalize_mac(text) == "A4:C1:38:8D:18:B2"


def test_normalize_mac_rejects_non_macs() -> None:
    with pytest.raises(ProtocolError):
        normalize_mac("5D1C8A32-0000-4000-8000-00805F9B34FB")


def test_key_errors_never_echo_the_key() -> None:
    almost = "231d39c1d7cc1ab1aee224cd096db9zz"
    with pytest.raises(ProtocolError) as info:
        parse_key_hex(almost)
    assert "231d39" not in str(info.value)
    with pytest.raises(ProtocolError) as info:
        parse_key_hex(almost[:-2])
    assert "231d39" not in str(info.value)
