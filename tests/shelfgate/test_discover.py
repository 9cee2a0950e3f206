"""`shelfgate discover` end to end: the real CLI in a subprocess against simulators on ptys and TCP, and the
in-process entry point where a seam (bleak's backend) has to be swapped.

Simulators run in the test's event loop; the CLI subprocess talks to them over real pty pairs and a real TCP
socket, exactly as it would talk to adapters on site. Waits are bounded only by generous hang guards.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import re
import subprocess
import sys
import tty
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from edge.config import ConfigError, StoreConfig, load_config
from firmware_sims.ble import SimAir, SimShelfSensor
from firmware_sims.layout import SimBus
from firmware_sims.modbus_server import ModbusSimServer
from firmware_sims.rfid import UhfModuleSim
from firmware_sims.scale import MtSicsScaleSim
from firmware_sims.serial_link import PtyNullModem
from firmware_sims.testing import WT_FLOAT32_CDAB, WT_INT32_ABCD
from shelfgate import discover as discover_cmd
from shelfgate.cli import build_parser
from tests.drivers.modbus.multidrop import PtyMultidrop
from tests.drivers.modbus.scan_fixtures import sim_unit

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 120.0
SCALE_SERIAL = "B987654321"
SENSOR = "A4:C1:38:00:00:21"


async def run_cli(*argv: str, stderr: int | None = subprocess.PIPE) -> tuple[int, str, str]:
    """`python -m shelfgate discover ARGV…` → (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shelfgate",
        "discover",
        *argv,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=ROOT,
    )
    async with asyncio.timeout(HANG_GUARD_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), (err or b"").decode()


def add_example_bins(text: str) -> str:
    """What the draft tells the installer to do: delete the `bins: []` line and uncomment the example."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if line == discover_cmd.BINS_PLACEHOLDER:
            continue
        if line in (discover_cmd.EXAMPLE_BIN_START, discover_cmd.EXAMPLE_BIN_END):
            inside = line == discover_cmd.EXAMPLE_BIN_START
            out.append(line)
            continue
        out.append(line.removeprefix("# ") if inside else line)
    return "\n".join(out) + "\n"


# --- the documented --json schema, written out independently of the code that produces it ---------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PortJ(_Strict):
    device: str
    by_id: str | None
    usb: bool
    vid: str | None
    pid: str | None
    serial_number: str | None
    manufacturer: str | None
    product: str | None
    description: str | None
    hint: str | None
    explicit: bool


class CandidateJ(_Strict):
    profile: str
    readable: bool | None
    channels: int
    plausible: int
    all_zero: bool
    note: str


ReplyKindJ = Literal["ok", "exception", "timeout", "late", "garbled", "gateway"]


class UnitJ(_Strict):
    unit_id: int = Field(ge=1, le=247)
    status: Literal["ok", "slow", "conflict", "garbled"]
    replies: dict[ReplyKindJ, int]
    exception_code: int | None
    profile: str | None
    profile_weak: bool
    profile_reason: str | None
    candidates: list[CandidateJ]
    note: str
    garbled: list[str]


class BusJ(_Strict):
    bus_id: str
    kind: Literal["rtu", "tcp"]
    target: str
    port: str | None
    host: str | None
    tcp_port: int | None
    baudrate: int | None
    parity: Literal["N", "E", "O"] | None
    stopbits: int | None
    id_range: tuple[int, int]
    timeout_s: float
    duration_s: float
    requests: int
    units: list[UnitJ]
    conflicts: list[int]
    answers_every_id: bool
    notes: list[str]


class ScaleJ(_Strict):
    protocol: Literal["mt-sics"]
    baudrate: int
    found: bool
    serial_number: str | None
    detail: str
    lines: list[str]


class RfidJ(_Strict):
    protocol: Literal["m100"]
    baudrate: int
    found: bool
    hardware: str | None
    software: str | None
    detail: str


class ProbeJ(_Strict):
    port: str
    found: Literal["scale", "rfid"] | None
    error: str | None
    scale: ScaleJ
    rfid: RfidJ | None


class SensorJ(_Strict):
    mac: str
    adverts: int
    rssi: int | None
    rssi_max: int | None
    encrypted: bool
    local_name: str | None
    mass_kg: float | None
    battery_pct: int | None
    decode_error: str | None
    weak: bool


class BleJ(_Strict):
    duration_s: float
    sensors: list[SensorJ]
    other_adverts: int


class DiscoverJ(_Strict):
    schema_: Literal["shelfgate.discover/1"] = Field(alias="schema")
    started_at: datetime
    found: bool
    serial_ports: list[PortJ]
    modbus: list[BusJ]
    probes: list[ProbeJ]
    ble: BleJ | None


# --- the CLI in a subprocess ------------------------------------------------------------------------------


async def test_discover_finds_every_serial_family_and_writes_a_draft_that_validates(tmp_path: Path) -> None:
    draft = tmp_path / "draft.yaml"
    rtu_units = [sim_unit(1, WT_FLOAT32_CDAB), sim_unit(3, WT_INT32_ABCD)]
    tcp_units = [sim_unit(2, WT_INT32_ABCD)]
    async with (
        PtyNullModem() as rtu,
        PtyNullModem() as scale_line,
        PtyNullModem() as rfid_line,
        PtyNullModem() as silent_line,
        ModbusSimServer(SimBus("rtu", "rtu"), rtu_units, serial_path=rtu.device_path),
        ModbusSimServer(SimBus("tcp", "tcp"), tcp_units) as tcp,
        MtSicsScaleSim(scale_line.device_path, serial_number=SCALE_SERIAL),
        UhfModuleSim(rfid_line.device_path),
    ):
        code, out, err = await run_cli(
            "--rtu", rtu.host_path, "--baud", "19200",
            "--tcp", f"127.0.0.1:{tcp.port}",
            "--ids", "1-4", "--timeout", "0.2",
            "--probe", scale_line.host_path, rfid_line.host_path, silent_line.host_path,
            "--probe-timeout", "0.5",
            "--json", "--write-config", str(draft),
        )  # fmt: skip
    assert code == 0, err
    doc = DiscoverJ.model_validate(json.loads(out))
    assert doc.found

    rtu_bus, tcp_bus = doc.modbus
    assert (rtu_bus.bus_id, rtu_bus.kind, rtu_bus.port, rtu_bus.baudrate) == (
        "rtu1",
        "rtu",
        rtu.host_path,
        19200,
    )
    assert {u.unit_id: u.profile for u in rtu_bus.units} == {1: "wt-float32-cdab", 3: "wt-int32-abcd"}
    assert {u.unit_id: u.profile for u in tcp_bus.units} == {2: "wt-int32-abcd"}
    assert all(u.status == "ok" for u in rtu_bus.units + tcp_bus.units)
    assert rtu_bus.conflicts == tcp_bus.conflicts == []
    assert not rtu_bus.answers_every_id
    assert rtu_bus.id_range == (1, 4)

    by_port = {p.port: p for p in doc.probes}
    assert by_port[scale_line.host_path].found == "scale"
    assert by_port[scale_line.host_path].scale.serial_number == SCALE_SERIAL
    assert by_port[rfid_line.host_path].found == "rfid"
    assert by_port[silent_line.host_path].found is None
    assert by_port[silent_line.host_path].error is None
    explicit = {p.device for p in doc.serial_ports if p.explicit}
    assert {rtu.host_path, scale_line.host_path, rfid_line.host_path, silent_line.host_path} <= explicit
    assert doc.ble is None

    # Progress goes to stderr; not a terminal here, so plain lines.
    assert "scan rtu1" in err
    assert f"scan tcp1 127.0.0.1:{tcp.port}: 4/4 ids, 1 answered" in err
    assert "\r" not in err

    text = draft.read_text(encoding="utf-8")
    if StoreConfig.model_fields["bins"].is_required():  # a schema that insists on bins: only they miss
        with pytest.raises(ConfigError) as excinfo:
            load_config(draft)
        assert [i.path for i in excinfo.value.issues] == ["bins"]
    else:  # as written, the draft is a valid store config already
        load_config(draft)

    edited = tmp_path / "edited.yaml"
    edited.write_text(add_example_bins(text), encoding="utf-8")
    cfg = load_config(edited)
    tx = {t.id: (t.bus, t.unit_id, t.profile) for t in cfg.store.transmitters}
    assert tx == {
        "tx-rtu1-1": ("rtu1", 1, "wt-float32-cdab"),
        "tx-rtu1-3": ("rtu1", 3, "wt-int32-abcd"),
        "tx-tcp1-2": ("tcp1", 2, "wt-int32-abcd"),
    }
    buses = {b.id: b.model_dump() for b in cfg.store.buses}
    assert buses["rtu1"]["port"] == rtu.host_path
    assert buses["rtu1"]["baudrate"] == 19200
    assert (buses["tcp1"]["host"], buses["tcp1"]["port"]) == ("127.0.0.1", tcp.port)
    assert cfg.store.bins[0].device == "tx-rtu1-1"

    assert SCALE_SERIAL in text  # in the comment above the scale's entry
    assert rfid_line.host_path in text
    if "scales" in StoreConfig.model_fields:  # this build's schema has the section: the draft fills it
        scales = [s.model_dump() for s in cfg.store.scales]
        assert [(s["id"], s["port"], s["baudrate"]) for s in scales] == [
            ("scale1", scale_line.host_path, 9600)
        ]
    else:  # not: the finding is kept as a comment for the installer
        assert "# scales found (this gateway's config has no `scales` section yet):" in text


async def test_an_address_conflict_is_reported_and_left_out_of_the_draft(tmp_path: Path) -> None:
    draft = tmp_path / "draft.yaml"
    line_a = [sim_unit(4, WT_INT32_ABCD), sim_unit(5, WT_INT32_ABCD, zero=1000.0)]
    line_b = [sim_unit(5, WT_INT32_ABCD, zero=4000.0, count=3)]
    async with (
        PtyMultidrop(2) as line,
        ModbusSimServer(SimBus("a", "rtu"), line_a, serial_path=line.device_paths[0]),
        ModbusSimServer(SimBus("b", "rtu"), line_b, serial_path=line.device_paths[1]),
    ):
        code, out, err = await run_cli(
            "--rtu", line.host_path, "--ids", "2-8", "--timeout", "0.2", "--write-config", str(draft)
        )  # fmt: skip
    assert code == 0, err
    rows = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln[:3].strip().isdigit()}
    assert rows == {"4": "ok", "5": "conflict"}
    assert "ADDRESS CONFLICT" in out
    assert "2 responding" not in out
    assert "1 responding, 1 address conflict (" in out
    text = draft.read_text(encoding="utf-8")
    assert "# unit 5 on rtu1 left out: ADDRESS CONFLICT" in text
    assert "tx-rtu1-4" in text
    assert "tx-rtu1-5" not in text


async def test_nothing_found_exits_1_and_says_what_to_check() -> None:
    async with PtyNullModem() as link:
        code, out, _ = await run_cli("--rtu", link.host_path, "--ids", "1-3", "--timeout", "0.1")
    assert code == 1
    assert "no replies: check wiring" in out


async def test_progress_is_a_redrawn_bar_on_a_terminal() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        async with (
            PtyNullModem() as link,
            ModbusSimServer(SimBus("rtu", "rtu"), [sim_unit(2, WT_INT32_ABCD)], serial_path=link.device_path),
        ):
            code, out, _ = await run_cli(
                "--rtu", link.host_path, "--ids", "1-3", "--timeout", "0.2", stderr=slave
            )  # fmt: skip
        os.close(slave)
        slave = -1
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError as exc:  # EIO once the slave side is gone and everything was read
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert code == 0
    assert re.search(r"^\s+2\s+ok\s", out, re.MULTILINE)
    text = shown.decode()
    assert "\r" in text
    assert "[" + "#" * 30 + "] 3/3 ids, 1 answered" in text
    assert text.count("\r") >= 3  # redrawn per id, not a line per id


async def test_write_config_never_overwrites_without_force(tmp_path: Path) -> None:
    draft = tmp_path / "store.yaml"
    draft.write_text("store_id: keep-me\n", encoding="utf-8")
    code, out, err = await run_cli("--write-config", str(draft))
    assert code == 2
    assert out == ""
    assert err.strip().splitlines() == [
        f"shelfgate discover: {draft} exists; not overwriting it without --force"
    ]
    assert draft.read_text(encoding="utf-8") == "store_id: keep-me\n"

    async with (
        PtyNullModem() as link,
        ModbusSimServer(SimBus("rtu", "rtu"), [sim_unit(1, WT_INT32_ABCD)], serial_path=link.device_path),
    ):
        code, _, err = await run_cli(
            "--rtu", link.host_path, "--ids", "1-2", "--timeout", "0.2", "--write-config", str(draft), "--force"
        )  # fmt: skip
    assert code == 0, err
    assert "tx-rtu1-1" in draft.read_text(encoding="utf-8")
    assert f"draft config written to {draft}" in err


# --- usage and I/O errors: one line, exit 2 ----------------------------------------------------------------


def _run(argv: list[str], **seams: Any) -> int:
    args = build_parser().parse_args(["discover", *argv])
    code: int = args.func(args, **seams)
    return code


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rtu", "/dev/ttyNOPE0"], "/dev/ttyNOPE0: no such port"),
        (["--probe", "/dev/ttyNOPE1"], "/dev/ttyNOPE1: no such port"),
        (["--ids", "0-300"], "--ids '0-300': unit ids run 1..247, first ≤ last"),
        (["--ids", "abc"], "--ids 'abc': expected FIRST-LAST, e.g. 1-247"),
        (["--tcp", "host:99999"], "--tcp 'host:99999': port 99999 out of range"),
        (["--timeout", "0"], "--timeout must be positive, got 0"),
        (["--store-id", "bad id"], "--store-id 'bad id': letters, digits, '_', '.', '-' (at most 64)"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"shelfgate discover: {message}"]


def test_a_refused_tcp_endpoint_is_an_io_error(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    assert _run(["--tcp", f"127.0.0.1:{port}", "--ids", "1-2"], progress_stream=io.StringIO()) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"shelfgate discover: 127.0.0.1:{port}: cannot connect")


def test_no_bluetooth_adapter_is_an_io_error(capsys: pytest.CaptureFixture[str]) -> None:
    air = SimAir(adapter_present=False)
    assert _run(["--ble", "0.2"], ble_backend=air.bleak_backend(), comports=list) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("shelfgate discover: BLE: cannot start a BLE scan")


def test_listing_no_ports_is_nothing_found(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert _run([], comports=list, by_id_dir=tmp_path) == 1
    assert "none (USB adapters show up here; name a pty with --port)" in capsys.readouterr().out


def test_probe_defaults_match_the_drivers() -> None:
    from drivers.rfid.probe import DEFAULT_BAUDRATE as RFID
    from drivers.scale.probe import DEFAULT_BAUDRATE as SCALE

    assert (discover_cmd.SCALE_BAUDRATE, discover_cmd.RFID_BAUDRATE) == (SCALE, RFID)


# --- in process: BLE through the fake bleak backend, and the draft against an extended schema -------------


class _ScaleEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    port: str
    baudrate: int = 9600
    protocol: Literal["mt-sics", "nci"]  # spelled differently from edge.config: the draft must adapt


class _RfidEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    port: str
    baudrate: int = 115200  # no `protocol` key here: the draft must leave it out


class _BleEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    mac: str
    bin: str  # a fact discovery cannot know: the draft must leave the entry to the installer


class _FamilySchema(BaseModel):
    """Another store-config schema with the family sections (the draft reads only `model_fields`)."""

    scales: list[_ScaleEntry] = Field(default_factory=list)
    rfid_readers: list[_RfidEntry] = Field(default_factory=list)
    ble_sensors: list[_BleEntry] = Field(default_factory=list)


class _BareSchema(BaseModel):
    """A store-config schema from before the family sections existed."""

    store_id: str


async def test_ble_probes_and_the_draft_follow_the_schema_they_run_with() -> None:
    air = SimAir()
    opts = discover_cmd.DiscoverOptions(ble_s=1.0)
    async with (
        PtyNullModem() as scale_line,
        PtyNullModem() as rfid_line,
        MtSicsScaleSim(scale_line.device_path, serial_number=SCALE_SERIAL),
        UhfModuleSim(rfid_line.device_path),
        SimShelfSensor(air, SENSOR, masses_kg=[2.5], rssi=-70, interval_s=0.05),
    ):
        opts.probe = [scale_line.host_path, rfid_line.host_path]
        report = await discover_cmd.discover(
            opts, ble_backend=air.bleak_backend(), progress_stream=io.StringIO()
        )
    doc = DiscoverJ.model_validate(discover_cmd.report_json(report))
    assert doc.found
    assert doc.ble is not None
    assert [(s.mac, s.rssi, s.mass_kg, s.encrypted) for s in doc.ble.sensors] == [(SENSOR, -70, 2.5, False)]
    table = discover_cmd.render_table(report)
    assert "BLE BTHome sensors (1 s listen" in table
    assert SENSOR in table
    assert "2.5 kg" in table
    assert f"MT-SICS balance, serial number {SCALE_SERIAL}" in table

    bare = discover_cmd.draft_config(report, store_id="shop-7", schema=_BareSchema)
    for section in ("scales", "rfid_readers", "ble_sensors"):
        assert f"# {section} found (this gateway's config has no `{section}` section yet):" in bare
    assert set(yaml.safe_load(bare)) == {"store_id", "buses", "transmitters", "bins"}

    text = discover_cmd.draft_config(report, store_id="shop-7", schema=_FamilySchema)
    data = yaml.safe_load(add_example_bins(text))
    assert data["store_id"] == "shop-7"
    assert data["scales"] == [
        {"id": "scale1", "port": scale_line.host_path, "baudrate": 9600, "protocol": "mt-sics"}
    ]
    assert data["rfid_readers"] == [{"id": "rfid1", "port": rfid_line.host_path, "baudrate": 115200}]
    assert "ble_sensors" not in data  # needs a bin: left to the installer, as a comment saying why
    assert "# ble_sensors:" in text
    assert "TODO: complete it, then uncomment (bin: Field required)" in text
    _FamilySchema.model_validate({k: data[k] for k in ("scales", "rfid_readers")})

    real = discover_cmd.draft_config(report, store_id="shop-7")  # this build's StoreConfig
    if "ble_sensors" in StoreConfig.model_fields:
        sensors = yaml.safe_load(add_example_bins(real))["ble_sensors"]
        assert sensors == [{"id": "ble1", "mac": SENSOR, "keyed": False}]


async def test_probe_all_probes_every_usb_port_but_the_scanned_bus(tmp_path: Path) -> None:
    from serial.tools.list_ports_common import ListPortInfo

    def usb(device: str, serial: str) -> ListPortInfo:
        info = ListPortInfo(device, skip_link_detection=True)
        info.vid, info.pid, info.serial_number = 0x1A86, 0x7523, serial
        return info

    async with (
        PtyNullModem() as scale_line,
        PtyNullModem() as rtu,
        MtSicsScaleSim(scale_line.device_path, serial_number=SCALE_SERIAL) as scale,
        ModbusSimServer(SimBus("rtu", "rtu"), [sim_unit(1, WT_INT32_ABCD)], serial_path=rtu.device_path),
    ):
        opts = discover_cmd.DiscoverOptions(rtu=[rtu.host_path], first_id=1, last_id=2, timeout_s=0.2)
        opts.probe_all = True
        report = await discover_cmd.discover(
            opts,
            progress_stream=io.StringIO(),
            comports=lambda: [usb(scale_line.host_path, "S1"), usb(rtu.host_path, "R1")],
            by_id_dir=tmp_path,
        )
    assert [(p.port, p.found) for p in report.probes] == [(scale_line.host_path, "scale")]
    assert scale.commands == ["@"]
    assert [f.unit_id for f in report.buses[0].result.findings] == [1]
    ports = {p.device: p for p in report.ports}
    assert ports[scale_line.host_path].hint == "QinHeng CH340/CH341 USB-serial bridge"
    assert not ports[rtu.host_path].explicit  # listed by "pyserial", so not marked as named


async def test_a_device_answering_every_id_gives_one_transmitter_in_the_draft() -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    from drivers.modbus.protocol import ChannelReading, register_image

    image = register_image(WT_INT32_ABCD, [ChannelReading(ch, 1000.0 + ch, stable=True) for ch in range(12)])
    words = [image.get(a, 0) for a in range(112)]
    device = SimDevice(id=0, simdata=[SimData(0, count=112, values=words, datatype=DataType.REGISTERS)])
    server = ModbusTcpServer([device], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        listener = server.transport
        assert isinstance(listener, asyncio.Server)
        port = int(listener.sockets[0].getsockname()[1])
        opts = discover_cmd.DiscoverOptions(
            tcp=[discover_cmd.TcpTarget("127.0.0.1", port)], first_id=1, last_id=12, timeout_s=1.0
        )
        report = await discover_cmd.discover(opts, progress_stream=io.StringIO(), comports=list)
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]
    table = discover_cmd.render_table(report)
    assert "9 more ids answer the same way" in table
    assert "ignores the unit id" in table
    data = yaml.safe_load(discover_cmd.draft_config(report))
    assert [t["id"] for t in data["transmitters"]] == ["tx-tcp1-1"]
