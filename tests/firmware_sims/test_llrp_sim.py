"""The LLRP reader simulator on its own — no sllurp needed, so these run in every install.

Its encoder is checked byte for byte against LLRP messages captured in sllurp's test-suite (vectors in
`tests/vectors/rfid_llrp_and_serial_uhf.json`, source field kept), its framing against a minimal header
parser written here from LLRP 1.0.1 §16.1, and its reader behaviour over real TCP on 127.0.0.1 with a raw
asyncio client speaking hand-built messages.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sims.llrp import (
    ConnectionAttempt,
    ContentSelector,
    LlrpCodecError,
    LlrpReaderSim,
    LlrpSimTag,
    Message,
    MessageFramer,
    MessageType,
    Param,
    Status,
    TagObservation,
    decode_header,
    encode_message,
    find_param,
    iter_params,
    reader_event_connection,
    ro_access_report,
    tag_report_data,
    tlv,
)

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "rfid_llrp_and_serial_uhf.json").read_text(encoding="utf-8")
)
LLRP = {v["id"]: v for v in VECTORS["llrp_messages"]}


def minimal_header(data: bytes) -> tuple[int, int, int, int]:
    """LLRP 1.0.1 §16.1, written independently of the simulator: (version, type, length, id)."""
    first16 = int.from_bytes(data[0:2], "big")
    return (
        (first16 >> 10) & 0b111,
        first16 & 0x3FF,
        int.from_bytes(data[2:6], "big"),
        int.from_bytes(data[6:10], "big"),
    )


# --- encoder against captured vectors ------------------------------------------------------------------------


def test_reader_event_notification_matches_sllurps_encoding_vector() -> None:
    vector = LLRP["reader_event_notification_encode"]
    assert reader_event_connection(0, 0).hex() == vector["message_hex"]


@pytest.mark.parametrize("vector_id", ["ro_access_report_0", "ro_access_report_1", "ro_access_report_18"])
def test_ro_access_report_matches_captured_reports(vector_id: str) -> None:
    vector = LLRP[vector_id]
    e = vector["expected"]
    selector = ContentSelector(antenna_id=True, peak_rssi=True, first_seen=True, tag_seen_count=True)
    obs = TagObservation(e["EPC"], e["AntennaID"], e["PeakRSSI"], e["FirstSeenTimestampUTC"])
    encoded = ro_access_report(e["msg_id"], [tag_report_data(obs, selector)])
    assert encoded.hex() == vector["message_hex"]


@pytest.mark.parametrize(
    "vector_id", ["ro_access_report_0", "ro_access_report_18", "reader_event_notification_decode"]
)
def test_captured_messages_decode_with_the_simulators_parser(vector_id: str) -> None:
    vector = LLRP[vector_id]
    raw = bytes.fromhex(vector["message_hex"])
    e = vector["expected"]
    version, msg_type, length, msg_id = decode_header(raw)
    assert (version, msg_type, length, msg_id) == (e["msg_version"], e["msg_type"], len(raw), e["msg_id"])
    assert minimal_header(raw) == (version, msg_type, length, msg_id)
    if msg_type == MessageType.RO_ACCESS_REPORT:
        trd = find_param(raw[10:], Param.TAG_REPORT_DATA)
        assert trd is not None
        fields = dict(iter_params(trd))
        epc = fields[Param.EPC_96] if Param.EPC_96 in fields else fields[Param.EPC_DATA][2:]
        assert epc.hex() == e["EPC"]
        assert struct.unpack("!H", fields[Param.ANTENNA_ID])[0] == e["AntennaID"]
        assert struct.unpack("!b", fields[Param.PEAK_RSSI])[0] == e["PeakRSSI"]
        assert struct.unpack("!Q", fields[Param.FIRST_SEEN_UTC])[0] == e["FirstSeenTimestampUTC"]
    else:
        data = find_param(raw[10:], Param.READER_EVENT_NOTIFICATION_DATA)
        assert data is not None
        stamp = find_param(data, Param.UTC_TIMESTAMP)
        event = find_param(data, Param.CONNECTION_ATTEMPT_EVENT)
        assert stamp is not None
        assert event is not None
        assert struct.unpack("!Q", stamp)[0] == e["ReaderEventNotificationData"]["UTCTimestamp_us"]
        assert struct.unpack("!H", event)[0] == ConnectionAttempt.SUCCESS


def test_the_captured_report_stream_frames_message_by_message() -> None:
    stream = bytes.fromhex(VECTORS["llrp_stream"]["hex"])
    framer = MessageFramer()
    for i in range(0, len(stream), 7):  # odd chunking: messages straddle reads
        framer.feed(stream[i : i + 7])
    messages: list[Message] = []
    while (msg := framer.next_message()) is not None:
        messages.append(msg)
    assert messages
    assert all(m.msg_type == MessageType.RO_ACCESS_REPORT and m.version == 1 for m in messages)
    assert sum(10 + len(m.body) for m in messages) == len(stream)
    ids = [m.msg_id for m in messages]
    assert ids == sorted(ids)


# --- properties ----------------------------------------------------------------------------------------------


@given(
    msg_type=st.integers(0, 1023),
    msg_id=st.integers(0, 2**32 - 1),
    body=st.binary(max_size=300),
    chunk=st.integers(1, 50),
)
def test_encoder_round_trips_through_the_minimal_header_parser(
    msg_type: int, msg_id: int, body: bytes, chunk: int
) -> None:
    raw = encode_message(msg_type, msg_id, body)
    assert minimal_header(raw) == (1, msg_type, 10 + len(body), msg_id)
    assert raw[10:] == body
    framer = MessageFramer()
    got: list[Message] = []
    doubled = raw + raw
    for i in range(0, len(doubled), chunk):
        framer.feed(doubled[i : i + chunk])
        while (msg := framer.next_message()) is not None:
            got.append(msg)
    assert got == [Message(1, msg_type, msg_id, body)] * 2


@given(raw=st.binary(max_size=200))
def test_parameter_walker_on_garbage_only_raises_codec_errors(raw: bytes) -> None:
    try:
        for _ptype, value in iter_params(raw):
            assert len(value) <= len(raw)
    except LlrpCodecError:
        pass


@given(raw=st.binary(min_size=10, max_size=40))
def test_framer_on_garbage_waits_or_raises_codec_errors(raw: bytes) -> None:
    framer = MessageFramer()
    framer.feed(raw)
    try:
        msg = framer.next_message()
    except LlrpCodecError:
        return
    if msg is not None:
        assert 10 + len(msg.body) == minimal_header(raw)[2]


def test_tlv_and_tv_reject_impossible_parameters() -> None:
    with pytest.raises(LlrpCodecError):
        tlv(13, b"")  # TV types are below 128
    with pytest.raises(LlrpCodecError):
        decode_header(bytes.fromhex("e43d0000000a00000001"))  # reserved bits set
    with pytest.raises(LlrpCodecError):
        decode_header(bytes.fromhex("043d0000000400000001"))  # length shorter than the header


# --- the reader over TCP -------------------------------------------------------------------------------------


class RawClient:
    """Hand-built LLRP client messages over a real TCP connection (no sllurp)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = MessageFramer()
        self.next_id = 100

    async def receive(self) -> Message:
        async with asyncio.timeout(10):
            while (msg := self.framer.next_message()) is None:
                data = await self.reader.read(4096)
                assert data, "connection closed"
                self.framer.feed(data)
            return msg

    async def request(self, msg_type: int, body: bytes = b"") -> Message:
        self.next_id += 1
        self.writer.write(encode_message(msg_type, self.next_id, body))
        while True:
            msg = await self.receive()
            if msg.msg_type not in (MessageType.RO_ACCESS_REPORT, MessageType.KEEPALIVE):
                assert msg.msg_id == self.next_id  # a response carries its request's id
                return msg


def status_of(msg: Message) -> int:
    status = find_param(msg.body, Param.LLRP_STATUS)
    assert status is not None
    return int(struct.unpack_from("!H", status)[0])


def rospec(rospec_id: int, antennas: list[int], selector_flags: int, *, immediate: bool = True) -> bytes:
    """A ROSpec parameter per §16.2.4.1, built by hand."""
    boundary = tlv(
        Param.RO_BOUNDARY_SPEC,
        tlv(Param.ROSPEC_START_TRIGGER, bytes([1 if immediate else 0])),
        tlv(182, struct.pack("!BI", 0, 0)),  # ROSpecStopTrigger: Null
    )
    ai_spec = tlv(
        Param.AI_SPEC,
        struct.pack(f"!H{len(antennas)}H", len(antennas), *antennas),
        tlv(184, struct.pack("!BI", 0, 0)),  # AISpecStopTrigger: Null
        tlv(186, struct.pack("!HB", 1, 1)),  # InventoryParameterSpec: id 1, EPCGlobalClass1Gen2
    )
    report = tlv(
        Param.RO_REPORT_SPEC,
        struct.pack("!BH", 2, 0),  # upon N tags or end of ROSpec, N=0
        tlv(Param.TAG_REPORT_CONTENT_SELECTOR, struct.pack("!H", selector_flags)),
    )
    return tlv(Param.ROSPEC, struct.pack("!IBB", rospec_id, 0, 0), boundary, ai_spec, report)


@pytest.fixture
async def sim() -> AsyncIterator[LlrpReaderSim]:
    tags = [
        LlrpSimTag("3034257BF7194E4000001A85", antenna=1, rssi_dbm=-50, read_probability=1.0),
        LlrpSimTag("E2801160600002054C00A1B2", antenna=3, read_probability=1.0),
    ]
    async with LlrpReaderSim(antennas=4, tags=tags, round_s=0.02) as reader:
        yield reader


async def connect(sim: LlrpReaderSim) -> RawClient:
    reader, writer = await asyncio.open_connection(sim.host, sim.port)
    return RawClient(reader, writer)


async def test_connect_capabilities_rospec_reports_and_close(sim: LlrpReaderSim) -> None:
    client = await connect(sim)
    event = await client.receive()
    assert event.msg_type == MessageType.READER_EVENT_NOTIFICATION
    data = find_param(event.body, Param.READER_EVENT_NOTIFICATION_DATA)
    assert data is not None
    assert find_param(data, Param.CONNECTION_ATTEMPT_EVENT) == struct.pack("!H", ConnectionAttempt.SUCCESS)

    caps = await client.request(MessageType.GET_READER_CAPABILITIES, b"\x00")
    assert caps.msg_type == MessageType.GET_READER_CAPABILITIES_RESPONSE
    assert status_of(caps) == Status.SUCCESS
    general = find_param(caps.body, Param.GENERAL_DEVICE_CAPABILITIES)
    assert general is not None
    assert struct.unpack_from("!H", general)[0] == 4  # MaxNumberOfAntennaSupported
    only_llrp = await client.request(MessageType.GET_READER_CAPABILITIES, b"\x02")
    assert [t for t, _ in iter_params(only_llrp.body)] == [Param.LLRP_STATUS, Param.LLRP_CAPABILITIES]

    flags = 1 << 12 | 1 << 10 | 1 << 7  # AntennaID, PeakRSSI, TagSeenCount
    added = await client.request(MessageType.ADD_ROSPEC, rospec(7, [1, 2], flags))
    assert added.msg_type == MessageType.ADD_ROSPEC_RESPONSE
    assert status_of(added) == Status.SUCCESS
    duplicate = await client.request(MessageType.ADD_ROSPEC, rospec(7, [1], flags))
    assert status_of(duplicate) == Status.A_INVALID
    enabled = await client.request(MessageType.ENABLE_ROSPEC, struct.pack("!I", 7))
    assert status_of(enabled) == Status.SUCCESS

    report = await client.receive()  # Immediate start trigger: enabling started it
    while report.msg_type != MessageType.RO_ACCESS_REPORT:
        report = await client.receive()
    trd = find_param(report.body, Param.TAG_REPORT_DATA)
    assert trd is not None
    fields = dict(iter_params(trd))
    assert set(fields) == {Param.EPC_96, Param.ANTENNA_ID, Param.PEAK_RSSI, Param.TAG_SEEN_COUNT}
    assert (
        fields[Param.EPC_96].hex().upper() == "3034257BF7194E4000001A85"
    )  # antenna 3's tag is not in the spec
    assert struct.unpack("!H", fields[Param.ANTENNA_ID])[0] == 1

    unknown = await client.request(999)
    assert unknown.msg_type == MessageType.ERROR_MESSAGE
    assert status_of(unknown) == Status.UNSUPPORTED_MESSAGE
    short = await client.request(MessageType.START_ROSPEC, b"\x00")  # ROSpecID field cut short
    assert short.msg_type == MessageType.START_ROSPEC_RESPONSE
    assert status_of(short) == Status.FIELD_ERROR

    deleted = await client.request(MessageType.DELETE_ROSPEC, struct.pack("!I", 0))
    assert status_of(deleted) == Status.SUCCESS
    assert not sim.inventory_running
    closed = await client.request(MessageType.CLOSE_CONNECTION)
    assert closed.msg_type == MessageType.CLOSE_CONNECTION_RESPONSE
    assert status_of(closed) == Status.SUCCESS
    async with asyncio.timeout(10):
        assert await client.reader.read() == b""  # the reader closes after its response
    client.writer.close()


async def test_a_second_client_is_refused_while_one_is_connected(sim: LlrpReaderSim) -> None:
    first = await connect(sim)
    await first.receive()
    second = await connect(sim)
    event = await second.receive()
    data = find_param(event.body, Param.READER_EVENT_NOTIFICATION_DATA)
    assert data is not None
    refused = find_param(data, Param.CONNECTION_ATTEMPT_EVENT)
    assert refused == struct.pack("!H", ConnectionAttempt.CLIENT_CONNECTION_EXISTS)
    async with asyncio.timeout(10):
        assert await second.reader.read() == b""
    for c in (first, second):
        c.writer.close()


async def test_keepalives_follow_the_keepalive_spec(sim: LlrpReaderSim) -> None:
    client = await connect(sim)
    await client.receive()
    keepalive_spec = tlv(Param.KEEPALIVE_SPEC, struct.pack("!BI", 1, 30))  # periodic, 30 ms
    config = await client.request(MessageType.SET_READER_CONFIG, b"\x00" + keepalive_spec)
    assert status_of(config) == Status.SUCCESS
    kinds: list[int] = []
    while len(kinds) < 2:
        msg = await client.receive()
        kinds.append(msg.msg_type)
        client.writer.write(encode_message(MessageType.KEEPALIVE_ACK, msg.msg_id))
    assert kinds == [MessageType.KEEPALIVE] * 2
    client.writer.close()


async def test_killed_reader_comes_back_on_the_same_port(sim: LlrpReaderSim) -> None:
    client = await connect(sim)
    await client.receive()
    port = sim.port
    await sim.stop()
    async with asyncio.timeout(10):
        assert await client.reader.read() == b""
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(sim.host, port)
    await sim.start()
    assert sim.port == port
    again = await connect(sim)
    assert (await again.receive()).msg_type == MessageType.READER_EVENT_NOTIFICATION
    for c in (client, again):
        c.writer.close()


def test_malformed_report_fault_encodes_a_torn_epc() -> None:
    obs = TagObservation("300000000000000000000001", 1, -60, 5)
    torn = tag_report_data(obs, ContentSelector(), truncate_epc=True)
    fields: dict[int, Any] = dict(iter_params(torn[4:]))
    bits, epc = struct.unpack_from("!H", fields[Param.EPC_DATA])[0], fields[Param.EPC_DATA][2:]
    assert bits == 96
    assert len(epc) * 8 < bits  # the declared length is not what it carries
