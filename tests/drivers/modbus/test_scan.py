"""The bus scan: reply classification (vectors + properties), the profile heuristic, the conflict rule, and
whole scans against real pymodbus servers — RTU over pty pairs (one device per line, and two devices on one
multi-drop line for address conflicts) and TCP on 127.0.0.1.

No timed assertions: timeouts are short only where a silent id must be waited out; hang guards are generous.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.protocol import (
    ChannelReading,
    RegisterMap,
    ValueType,
    WeightPoint,
    WordOrder,
    register_image,
    rtu_frame,
)
from drivers.modbus.scan import (
    ProfileCheck,
    Reply,
    ReplyKind,
    RtuScanTransport,
    ScanError,
    ScanSettings,
    TcpScanTransport,
    UnitStatus,
    analyse_conflicts,
    check_profile,
    choose_profile,
    classify_rtu_reply,
    mbap_request,
    read_request_pdu,
    rtu_reply_complete,
    rtu_request,
    scan_bus,
)
from firmware_sims.layout import SimBus
from firmware_sims.modbus_server import ModbusSimServer
from firmware_sims.serial_link import PtyNullModem
from firmware_sims.testing import WT_FLOAT32_CDAB, WT_INT32_ABCD
from tests.drivers.modbus.multidrop import PtyMultidrop, merge_collision
from tests.drivers.modbus.scan_fixtures import PROFILES, sim_unit

VECTORS_FILE = Path(__file__).resolve().parents[2] / "vectors" / "modbus_rtu_weight_transmitter.json"
FRAMES: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["frames"]
FC03 = [f for f in FRAMES if f["function"] == 3 and f["crc_ok"]]
REQUESTS = [f for f in FC03 if "quantity" in f and "registers" not in f]
REPLIES = [f for f in FC03 if "registers" in f]
TIMEOUT_S = 0.15
"""Per-id timeout of the integration scans: short, since every silent id waits it out once."""


# --- requests and replies (vectors from tests/vectors/modbus_rtu_weight_transmitter.json) -------------------


@pytest.mark.parametrize("frame", REQUESTS, ids=[f["id"] for f in REQUESTS])
def test_rtu_request_matches_the_manual_frames(frame: dict[str, Any]) -> None:
    built = rtu_request(frame["slave"], frame["start_address"], frame["quantity"])
    assert built == bytes.fromhex(frame["frame_hex"])


@pytest.mark.parametrize("frame", REPLIES, ids=[f["id"] for f in REPLIES])
def test_vector_replies_classify_as_ok_with_their_registers(frame: dict[str, Any]) -> None:
    raw = bytes.fromhex(frame["frame_hex"])
    reply = classify_rtu_reply(raw, frame["slave"], len(frame["registers"]))
    assert reply.kind is ReplyKind.OK
    assert list(reply.registers) == frame["registers"]


@pytest.mark.parametrize("frame", REPLIES, ids=[f["id"] for f in REPLIES])
def test_every_proper_prefix_of_a_reply_is_incomplete(frame: dict[str, Any]) -> None:
    raw = bytes.fromhex(frame["frame_hex"])
    count = len(frame["registers"])
    assert rtu_reply_complete(raw)
    for n in range(len(raw)):
        assert not rtu_reply_complete(raw[:n])
        reply = classify_rtu_reply(raw[:n], frame["slave"], count)
        assert reply.kind is (ReplyKind.TIMEOUT if n == 0 else ReplyKind.GARBLED)


def test_garbled_replies_say_what_is_wrong() -> None:
    good = bytes.fromhex("010304000001627a4a")  # read_measured_resp: int32 354
    flipped = good[:4] + bytes((good[4] ^ 0x10,)) + good[5:]
    assert classify_rtu_reply(flipped, 1, 2).detail == "CRC mismatch"
    doubled = classify_rtu_reply(good + good, 1, 2)
    assert doubled.kind is ReplyKind.GARBLED
    assert "extra bytes after a valid reply" in doubled.detail
    other = classify_rtu_reply(good, 7, 2)
    assert (other.kind, other.detail) == (ReplyKind.GARBLED, "reply carries unit id 1")
    short_count = classify_rtu_reply(good, 1, 1)
    assert (short_count.kind, short_count.detail) == (ReplyKind.GARBLED, "byte count 4, expected 2")


def test_exception_replies_and_the_gateway_codes() -> None:
    # Modbus Application Protocol v1.1b3 §7: function | 0x80, then the exception code.
    illegal_address = classify_rtu_reply(rtu_frame(bytes((1, 0x83, 0x02))), 1, 1)
    assert (illegal_address.kind, illegal_address.exception_code) == (ReplyKind.EXCEPTION, 2)
    no_target = classify_rtu_reply(rtu_frame(bytes((1, 0x83, 0x0B))), 1, 1)
    assert (no_target.kind, no_target.exception_code) == (ReplyKind.GATEWAY, 0x0B)


def test_a_collision_of_two_different_replies_fails_the_crc() -> None:
    a = rtu_frame(bytes((5, 3, 2, 0x03, 0xE8)))  # 1000
    b = rtu_frame(bytes((5, 3, 2, 0x0B, 0xB8)))  # 3000
    reply = classify_rtu_reply(merge_collision([a, b]), 5, 1)
    assert (reply.kind, reply.detail) == (ReplyKind.GARBLED, "CRC mismatch")
    # Identical replies driven at once are identical bits on the wire: indistinguishable from one device.
    assert classify_rtu_reply(merge_collision([a, a]), 5, 1).kind is ReplyKind.OK


@given(raw=st.binary(max_size=64), unit=st.integers(1, 247), count=st.integers(1, 125))
def test_any_bytes_classify_without_raising(raw: bytes, unit: int, count: int) -> None:
    reply = classify_rtu_reply(raw, unit, count)
    assert reply.kind in set(ReplyKind)
    if reply.kind is ReplyKind.OK:
        assert len(reply.registers) == count


def test_mbap_request_layout() -> None:
    # Modbus Messaging on TCP/IP v1.0b §3.1.3: tid, protocol 0, length = unit + PDU, unit, PDU.
    assert mbap_request(1, 17, read_request_pdu(0x6B, 3)) == bytes.fromhex("00010000000611 03006b0003")


# --- the profile heuristic ----------------------------------------------------------------------------------


def _image(rmap: RegisterMap, values: Sequence[float], status_flags: bool = True) -> dict[int, int]:
    readings = [
        ChannelReading(ch, v, stable=status_flags, overload=False, fault=False) for ch, v in enumerate(values)
    ]
    image = register_image(rmap, readings)
    for ch in range(len(values), rmap.channels):  # unloaded inputs read zero
        start, width = rmap.weight_span(ch)
        image.update(dict.fromkeys(range(start, start + width), 0))
        span = rmap.status_span(ch)
        if span is not None:
            image[span[0]] = 0
    return image


def _cross(target: RegisterMap, source_image: dict[int, int]) -> dict[int, int]:
    """What reading `target`'s registers gives on a device whose words are `source_image` (0 elsewhere)."""
    out = {}
    for ch in range(target.channels):
        start, width = target.weight_span(ch)
        for a in range(start, start + width):
            out[a] = source_image.get(a, 0)
        span = target.status_span(ch)
        if span is not None:
            out[span[0]] = source_image.get(span[0], 0)
    return out


def test_each_profile_fits_its_own_registers() -> None:
    int_image = _image(WT_INT32_ABCD, [1354, 5000, -120, 1653607])
    float_image = _image(WT_FLOAT32_CDAB, [1234.5, 1037.25, 98.0])
    assert check_profile(WT_INT32_ABCD, int_image).fits
    assert check_profile(WT_FLOAT32_CDAB, float_image).fits


def test_int_counts_read_as_float_and_floats_read_as_int_are_implausible() -> None:
    """Same register addresses on purpose: only the words' meaning differs."""
    int_map_at_512 = RegisterMap("int-at-512", 10, WeightPoint(512), WT_FLOAT32_CDAB.status)
    int_image = _image(int_map_at_512, [1354.0, 5000.0, 120.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0])
    as_float = check_profile(WT_FLOAT32_CDAB, _cross(WT_FLOAT32_CDAB, int_image))
    assert not as_float.fits
    assert "implausible as float32 CDAB" in as_float.note

    float_at_0 = RegisterMap(
        "float-at-0", 12, WeightPoint(0, ValueType.FLOAT32, WordOrder.CDAB), WT_INT32_ABCD.status
    )
    float_image = _image(
        float_at_0, [1234.5, 1037.25, 98.5, 1500.0, 2500.0, 3500.0, 4500.0, 5500.0, 6500.0, 7500.0]
    )
    as_int = check_profile(WT_INT32_ABCD, _cross(WT_INT32_ABCD, float_image))
    assert not as_int.fits
    assert "implausible as int32 ABCD" in as_int.note


def test_undefined_status_bits_count_against_a_profile() -> None:
    image = _image(WT_INT32_ABCD, [1000.0] * 12)
    for ch in range(12):
        image[100 + ch] |= 1 << 9  # bit 9 means nothing in wt-int32-abcd
    check = check_profile(WT_INT32_ABCD, image)
    assert not check.fits
    assert "12 status words set undefined bits" in check.note


def test_choose_profile_explains_weak_ambiguous_and_missing_fits() -> None:
    ok = ProfileCheck("a", True, 10, 10)
    unreadable = ProfileCheck("b", False, 12, 0, note="registers 0..23 not readable (exception 02)")
    guess = choose_profile([ok, unreadable])
    assert guess.profile == "a"
    assert "b: registers 0..23 not readable" in guess.reason

    zero = ProfileCheck("a", True, 10, 10, all_zero=True, note="every register reads 0")
    weak = choose_profile([zero, unreadable])
    assert (weak.profile, weak.weak) == ("a", True)

    both = choose_profile([ProfileCheck("a", True, 10, 10), ProfileCheck("c", True, 10, 10)])
    assert both.profile is None
    assert "several profiles" in both.reason

    none = choose_profile([ProfileCheck("a", True, 10, 2, note="8 weights implausible"), unreadable])
    assert none.profile is None
    assert none.reason.startswith("no profile fits")


# --- the conflict rule --------------------------------------------------------------------------------------

OK = Reply(ReplyKind.OK, (1,))
SILENT = Reply(ReplyKind.TIMEOUT)
BAD = Reply(ReplyKind.GARBLED, detail="CRC mismatch")


def test_repeated_garbling_between_clean_neighbours_is_a_conflict() -> None:
    histories = {1: [OK], 2: [SILENT], 3: [SILENT], 4: [BAD, BAD, BAD], 5: [SILENT], 6: [OK, OK]}
    verdicts = analyse_conflicts(histories)
    assert verdicts[4][0] is UnitStatus.CONFLICT
    assert "ids 2, 3, 5, 6 are clean" in verdicts[4][1]
    assert set(verdicts) == {4}


def test_a_single_glitch_is_not_a_conflict() -> None:
    verdicts = analyse_conflicts({1: [SILENT], 2: [BAD, OK, OK], 3: [SILENT]})
    assert verdicts[2][0] is UnitStatus.OK
    assert "not repeated" in verdicts[2][1]


def test_garbled_neighbours_mean_a_line_problem_not_a_conflict() -> None:
    histories = {1: [SILENT], 2: [BAD, BAD], 3: [BAD, BAD, OK], 4: [SILENT]}
    verdicts = analyse_conflicts(histories)
    assert verdicts[2][0] is verdicts[3][0] is UnitStatus.GARBLED
    assert "next to it are garbled too" in verdicts[2][1]


def test_a_lone_id_cannot_be_judged() -> None:
    verdicts = analyse_conflicts({9: [BAD, BAD, BAD]})
    assert verdicts[9][0] is UnitStatus.GARBLED
    assert "no neighbouring id" in verdicts[9][1]


# --- whole scans against pymodbus servers ---------------------------------------------------------------------


async def test_rtu_scan_finds_each_transmitter_with_its_profile() -> None:
    units = [sim_unit(2, WT_FLOAT32_CDAB), sim_unit(4, WT_INT32_ABCD), sim_unit(6, WT_INT32_ABCD)]
    units[2].faults.silent = True  # powered off: must not be reported
    calls: list[tuple[int, int, int]] = []
    async with (
        PtyNullModem() as link,
        ModbusSimServer(SimBus("rtu", "rtu"), units, serial_path=link.device_path),
        RtuScanTransport(link.host_path, baudrate=19200, timeout_s=TIMEOUT_S) as transport,
    ):
        result = await scan_bus(transport, ScanSettings(1, 8), PROFILES, progress=lambda *a: calls.append(a))
    assert [(f.unit_id, f.status) for f in result.findings] == [(2, UnitStatus.OK), (4, UnitStatus.OK)]
    guesses = {f.unit_id: f.guess.profile if f.guess else None for f in result.findings}
    assert guesses == {2: "wt-float32-cdab", 4: "wt-int32-abcd"}
    assert result.conflicts == []
    # The float transmitter has no register 0: the sweep's exception reply still proves it is there.
    assert result.findings[0].exception_code == 2
    assert [c[0] for c in calls] == list(range(1, 9))
    assert calls[-1] == (8, 8, 2)


async def test_tcp_scan_finds_each_transmitter_with_its_profile() -> None:
    """(Late replies are tested on RTU only: pymodbus' TCP server answers a delayed request with the MBAP
    header of the newest request on the connection, so a late reply there looks like another unit's.)"""
    units = [sim_unit(1, WT_INT32_ABCD), sim_unit(2, WT_INT32_ABCD), sim_unit(5, WT_FLOAT32_CDAB)]
    units[1].faults.silent = True
    async with ModbusSimServer(SimBus("tcp", "tcp"), units) as server:
        assert server.port is not None
        async with TcpScanTransport("127.0.0.1", server.port, timeout_s=TIMEOUT_S) as transport:
            result = await scan_bus(transport, ScanSettings(1, 8), PROFILES)
    by_id = {f.unit_id: f for f in result.findings}
    assert set(by_id) == {1, 5}
    profiles = {uid: f.guess.profile if f.guess else None for uid, f in by_id.items()}
    assert profiles == {1: "wt-int32-abcd", 5: "wt-float32-cdab"}
    assert all(f.status is UnitStatus.OK for f in by_id.values())
    assert result.target == f"127.0.0.1:{server.port}"


async def test_rtu_late_replies_are_credited_to_their_own_unit() -> None:
    """A reply that arrives during the next id's exchange is that next id's timeout, not its garbage."""
    units = [sim_unit(1, WT_INT32_ABCD), sim_unit(3, WT_INT32_ABCD)]
    async with PtyNullModem() as link:
        link.delay_s = 2.5 * TIMEOUT_S
        async with (
            ModbusSimServer(SimBus("rtu", "rtu"), units, serial_path=link.device_path),
            RtuScanTransport(link.host_path, timeout_s=TIMEOUT_S) as transport,
        ):
            result = await scan_bus(transport, ScanSettings(1, 10), PROFILES)
    by_id = {f.unit_id: f for f in result.findings}
    assert set(by_id) == {1, 3}
    assert all(f.status is UnitStatus.SLOW for f in by_id.values())
    assert all(f.replies["late"] >= 1 for f in by_id.values())
    assert "longer --timeout" in by_id[1].note
    assert all(f.replies["garbled"] == 0 for f in by_id.values())


@pytest.mark.parametrize("window_s", [0.015, 0.0], ids=["replies-collide", "replies-back-to-back"])
async def test_two_devices_at_one_id_are_reported_as_a_conflict(window_s: float) -> None:
    line_a = [sim_unit(1, WT_FLOAT32_CDAB), sim_unit(5, WT_INT32_ABCD, zero=1000.0, count=5)]
    line_b = [sim_unit(5, WT_INT32_ABCD, zero=3000.0, count=2), sim_unit(9, WT_FLOAT32_CDAB)]
    async with (
        PtyMultidrop(2, collision_window_s=window_s) as line,
        ModbusSimServer(SimBus("a", "rtu"), line_a, serial_path=line.device_paths[0]),
        ModbusSimServer(SimBus("b", "rtu"), line_b, serial_path=line.device_paths[1]),
        RtuScanTransport(line.host_path, timeout_s=TIMEOUT_S) as transport,
    ):
        result = await scan_bus(transport, ScanSettings(1, 12), PROFILES)
    by_id = {f.unit_id: f for f in result.findings}
    assert set(by_id) == {1, 5, 9}
    assert result.conflicts == [5]
    assert by_id[5].status is UnitStatus.CONFLICT
    assert "ADDRESS CONFLICT" in by_id[5].note
    assert by_id[5].replies["garbled"] >= 2
    assert by_id[5].guess is None
    for uid in (1, 9):
        guess = by_id[uid].guess
        assert by_id[uid].status is UnitStatus.OK
        assert guess is not None
        assert guess.profile == "wt-float32-cdab"


async def test_conflicts_side_by_side_are_reported_as_a_garbled_stretch() -> None:
    """Two pairs of duplicates at neighbouring ids: the rule cannot single out an address, and says so."""
    line_a = [sim_unit(5, WT_INT32_ABCD, zero=1000.0), sim_unit(6, WT_INT32_ABCD, zero=1500.0)]
    line_b = [sim_unit(5, WT_INT32_ABCD, zero=3000.0), sim_unit(6, WT_INT32_ABCD, zero=3500.0)]
    async with (
        PtyMultidrop(2) as line,
        ModbusSimServer(SimBus("a", "rtu"), line_a, serial_path=line.device_paths[0]),
        ModbusSimServer(SimBus("b", "rtu"), line_b, serial_path=line.device_paths[1]),
        RtuScanTransport(line.host_path, timeout_s=TIMEOUT_S) as transport,
    ):
        result = await scan_bus(transport, ScanSettings(3, 8), PROFILES)
    by_id = {f.unit_id: f for f in result.findings}
    assert set(by_id) == {5, 6}
    assert all(f.status is UnitStatus.GARBLED for f in by_id.values())
    assert "next to it are garbled too" in by_id[5].note


async def test_a_missing_port_or_a_refused_connection_is_a_scan_error(tmp_path: Path) -> None:
    with pytest.raises(ScanError, match="cannot open"):
        async with RtuScanTransport(str(tmp_path / "ttyUSB9")):
            pass
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with pytest.raises(ScanError, match="cannot connect"):
        async with TcpScanTransport("127.0.0.1", port, timeout_s=0.2):
            pass


def test_scan_settings_refuse_impossible_ranges() -> None:
    with pytest.raises(ValueError, match=r"1\.\.247"):
        ScanSettings(0, 10)
    with pytest.raises(ValueError, match=r"1\.\.247"):
        ScanSettings(10, 5)
    with pytest.raises(ValueError, match="attempts"):
        ScanSettings(attempts=0)


def test_read_request_pdu_is_fc03_big_endian() -> None:
    assert read_request_pdu(0x6B, 3) == struct.pack(">BHH", 3, 0x6B, 3)


async def test_a_tcp_device_that_ignores_the_unit_id_is_reported_once() -> None:
    """pymodbus device id 0 answers every unit id, like many Modbus TCP devices that are not gateways."""
    image = register_image(WT_INT32_ABCD, [ChannelReading(ch, 1000.0 + ch, stable=True) for ch in range(12)])
    words = [image.get(a, 0) for a in range(112)]
    device = SimDevice(id=0, simdata=[SimData(0, count=112, values=words, datatype=DataType.REGISTERS)])
    server = ModbusTcpServer([device], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        listener = server.transport
        assert isinstance(listener, asyncio.Server)
        port = int(listener.sockets[0].getsockname()[1])
        async with TcpScanTransport("127.0.0.1", port, timeout_s=1.0) as transport:
            result = await scan_bus(transport, ScanSettings(1, 10), PROFILES)
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]
    assert result.answers_every_id
    assert len(result.findings) == 10
    assert "ignores the unit id" in result.notes[0]
    guess = result.findings[0].guess
    assert guess is not None
    assert guess.profile == "wt-int32-abcd"


async def test_a_port_lost_mid_scan_ends_the_scan_with_a_scan_error() -> None:
    """The adapter unplugged (here: the pty pair closed) must end the scan at once, not time out 247 ids."""
    started = asyncio.Event()
    link = PtyNullModem()
    await link.__aenter__()
    try:
        async with RtuScanTransport(link.host_path, timeout_s=TIMEOUT_S) as transport:
            scan = asyncio.create_task(
                scan_bus(transport, ScanSettings(1, 247), progress=lambda *_: started.set()),
                name="test.scan",
            )
            async with asyncio.timeout(30):
                await started.wait()
            link.close()
            with pytest.raises(ScanError, match="port lost"):
                async with asyncio.timeout(30):
                    await scan
    finally:
        link.close()
