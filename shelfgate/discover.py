"""`shelfgate discover` — what is connected to this gateway? For installers, on site, over SSH.

    shelfgate discover                                   serial ports (USB vendor/product/serial, by-id path)
    shelfgate discover --rtu /dev/ttyUSB0 --baud 19200   + Modbus RTU scan of ids 1..247 (progress on stderr)
    shelfgate discover --tcp 192.168.1.50:502            + Modbus TCP scan
    shelfgate discover --probe /dev/ttyUSB1 /dev/ttyACM0 + MT-SICS scale / M100 RFID probes on those ports
    shelfgate discover --probe-all --ble 10              + probes on every USB port, BTHome listen for 10 s
    ... --json                                           machine-readable (schema "shelfgate.discover/1")
    ... --write-config draft.yaml [--force]              a draft store config to edit

Exit codes: 0 something was found (a device; a serial port counts only when listing ports was the whole job),
1 nothing was found, 2 usage or I/O error (one line on stderr: a port that cannot be opened, a TCP endpoint
that refuses, no Bluetooth adapter, a draft that would overwrite a file without `--force`).

The protocol work lives in the drivers (`drivers/modbus/scan.py`, `drivers/scale/probe.py`,
`drivers/rfid/probe.py`, `drivers/ble/survey.py`, `drivers/serial_ports.py`); this module parses options, runs
them in order, prints, and writes the draft. See docs/installer.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import yaml

if typing.TYPE_CHECKING:
    from bleak.backends.scanner import BaseBleakScanner

    from drivers.ble.survey import BleSurvey, BTHomeSighting
    from drivers.modbus.protocol import RegisterMap
    from drivers.modbus.scan import BusScanResult, UnitFinding
    from drivers.rfid.probe import RfidProbeResult
    from drivers.scale.probe import ScaleProbeResult
    from drivers.serial_ports import SerialPortInfo

# Driver modules are imported where they are used: building the CLI parser (which every `shelfgate`
# command does) must not load serial, Modbus-scan or BLE code into `shelfgate run`.

EXIT_FOUND: Final = 0
EXIT_NOTHING: Final = 1
EXIT_ERROR: Final = 2
JSON_SCHEMA_ID: Final = "shelfgate.discover/1"
SCALE_BAUDRATE: Final = 9600
"""= drivers.scale.probe.DEFAULT_BAUDRATE (MT-SICS factory setting; a test keeps them equal)."""
RFID_BAUDRATE: Final = 115200
"""= drivers.rfid.probe.DEFAULT_BAUDRATE (M100 factory setting; a test keeps them equal)."""
DEFAULT_TIMEOUT_S: Final = 0.1
"""Per-id reply timeout. Transmitters answer an FC03 in a few ms; 100 ms leaves room for slow ones and USB
adapter latency while keeping a 1..247 sweep under half a minute (docs/installer.md has the measurement)."""


class UsageError(Exception):
    """Bad options or an I/O problem: printed as one line, exit 2."""


# --- options ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpTarget:
    """One `--tcp HOST[:PORT]`."""

    host: str
    port: int


@dataclass(slots=True)
class DiscoverOptions:
    """Everything `discover` does, as plain data (the CLI builds it; tests may too)."""

    ports: list[str] = field(default_factory=list)
    rtu: list[str] = field(default_factory=list)
    tcp: list[TcpTarget] = field(default_factory=list)
    baudrate: int = 19200
    parity: str = "N"
    stopbits: int = 1
    first_id: int = 1
    last_id: int = 247
    timeout_s: float = DEFAULT_TIMEOUT_S
    attempts: int = 3
    guess_profiles: bool = True
    profile_dirs: list[Path] = field(default_factory=list)
    probe: list[str] = field(default_factory=list)
    probe_all: bool = False
    probe_timeout_s: float = 0.5
    scale_baudrate: int = SCALE_BAUDRATE
    rfid_baudrate: int = RFID_BAUDRATE
    ble_s: float | None = None
    ble_adapter: str | None = None

    @property
    def listing_only(self) -> bool:
        """No scan, probe or listen was asked for: the serial port list is the whole job."""
        return not (self.rtu or self.tcp or self.probe or self.probe_all or self.ble_s)


def parse_id_range(text: str) -> tuple[int, int]:
    """`1-247`, `1..247` or `5` → (first, last), within 1..247 (Modbus over Serial Line v1.02 §2.2)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:(?:-|\.\.)\s*(\d+)\s*)?", text)
    if m is None:
        raise UsageError(f"--ids {text!r}: expected FIRST-LAST, e.g. 1-247")
    first = int(m[1])
    last = int(m[2]) if m[2] else first
    if not 1 <= first <= last <= 247:
        raise UsageError(f"--ids {text!r}: unit ids run 1..247, first ≤ last")
    return first, last


def parse_tcp(text: str) -> TcpTarget:
    """`HOST`, `HOST:PORT` or `[v6]:PORT` → target (port 502 by default, the IANA Modbus/TCP port)."""
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\s]+)(?::(\d+))?", text.strip())
    if m is None:
        raise UsageError(f"--tcp {text!r}: expected HOST:PORT")
    host = m[1] or m[3]
    port = int(m[2] or m[4] or 502)
    if not 0 < port < 65536:
        raise UsageError(f"--tcp {text!r}: port {port} out of range")
    return TcpTarget(host, port)


def options_from_args(args: argparse.Namespace) -> DiscoverOptions:
    """Validate the parsed arguments into options; `UsageError` with one line on anything wrong."""
    first, last = parse_id_range(args.ids)

    def positive(name: str, value: float) -> float:
        if not value > 0:
            raise UsageError(f"{name} must be positive, got {value:g}")
        return value

    if args.attempts < 1:
        raise UsageError(f"--attempts must be at least 1, got {args.attempts}")
    if args.baud <= 0 or args.scale_baud <= 0 or args.rfid_baud <= 0:
        raise UsageError("baud rates must be positive")
    return DiscoverOptions(
        ports=list(args.port or []),
        rtu=list(args.rtu or []),
        tcp=[parse_tcp(t) for t in args.tcp or []],
        baudrate=args.baud,
        parity=args.parity,
        stopbits=args.stopbits,
        first_id=first,
        last_id=last,
        timeout_s=positive("--timeout", args.timeout),
        attempts=args.attempts,
        guess_profiles=not args.no_profile_guess,
        profile_dirs=list(args.profiles or []),
        probe=[p for group in args.probe or [] for p in group],
        probe_all=args.probe_all,
        probe_timeout_s=positive("--probe-timeout", args.probe_timeout),
        scale_baudrate=args.scale_baud,
        rfid_baudrate=args.rfid_baud,
        ble_s=None if args.ble is None else positive("--ble", args.ble),
        ble_adapter=args.ble_adapter,
    )


def load_profiles(extra_dirs: Sequence[Path] = ()) -> list[RegisterMap]:
    """The project's `config/profiles/*.yaml` plus any extra folders (a later file of the same name wins).

    The project folder may be absent (an installed wheel carries no `config/`); then only `--profiles` count.
    """
    from edge.config import PROJECT_PROFILES, ConfigError, load_profile

    for folder in extra_dirs:
        if not folder.is_dir():
            raise UsageError(f"--profiles {folder}: not a folder")
    found: dict[str, RegisterMap] = {}
    folders = [*([PROJECT_PROFILES] if PROJECT_PROFILES.is_dir() else []), *extra_dirs]
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            try:
                rmap = load_profile(path)
            except ConfigError as exc:
                first = exc.issues[0] if exc.issues else "invalid"
                raise UsageError(f"profile {path}: {first}") from exc
            found[rmap.name] = rmap
    return list(found.values())


# --- progress ---------------------------------------------------------------------------------------------


class ProgressBar:
    """A scan's progress on stderr: a redrawn bar on a terminal, a plain line every 10 % otherwise (logs, CI)."""

    def __init__(self, stream: TextIO, label: str, *, width: int = 30) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self._last_decile = -1

    def __call__(self, done: int, total: int, answered: int) -> None:
        if self.tty:
            filled = self.width * done // max(total, 1)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {done}/{total} ids, {answered} answered")
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()
            return
        decile = 10 * done // max(total, 1)
        if decile != self._last_decile or done >= total:
            self._last_decile = decile
            self.stream.write(f"{self.label}: {done}/{total} ids, {answered} answered\n")
            self.stream.flush()


# --- the run ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class BusReport:
    """One scanned bus with the settings it was scanned at."""

    bus_id: str
    kind: str
    result: BusScanResult
    port: str | None = None
    host: str | None = None
    tcp_port: int | None = None
    baudrate: int | None = None
    parity: str | None = None
    stopbits: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(slots=True)
class ProbeReport:
    """Both probes of one port."""

    port: str
    scale: ScaleProbeResult
    rfid: RfidProbeResult | None
    """None when the scale probe already identified the port (no point sending it RFID frames)."""

    @property
    def found(self) -> str | None:
        """'scale', 'rfid' or None."""
        if self.scale.found:
            return "scale"
        if self.rfid is not None and self.rfid.found:
            return "rfid"
        return None

    @property
    def error(self) -> str | None:
        """Why the port could not be used, if it could not."""
        return self.scale.error or (self.rfid.error if self.rfid is not None else None)


@dataclass(slots=True)
class DiscoverReport:
    """Everything found; rendered as a table, as JSON, and as a draft config."""

    options: DiscoverOptions
    ports: list[SerialPortInfo] = field(default_factory=list)
    buses: list[BusReport] = field(default_factory=list)
    probes: list[ProbeReport] = field(default_factory=list)
    ble: BleSurvey | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def ble_sensors(self) -> list[BTHomeSighting]:
        """The BTHome devices heard, by MAC (empty when BLE was not asked for)."""
        return [] if self.ble is None else sorted(self.ble.sensors.values(), key=lambda s: s.mac)

    @property
    def found(self) -> bool:
        """Did the requested discovery find anything (see the module docstring)?"""
        if self.options.listing_only:
            return bool(self.ports)
        devices = sum(len(b.result.findings) for b in self.buses)
        devices += sum(p.found is not None for p in self.probes)
        devices += len(self.ble.sensors) if self.ble is not None else 0
        return devices > 0


async def discover(
    opts: DiscoverOptions,
    *,
    progress_stream: TextIO | None = None,
    ble_backend: type[BaseBleakScanner] | None = None,
    comports: Callable[[], Sequence[Any]] | None = None,
    by_id_dir: Path | None = None,
) -> DiscoverReport:
    """Run every part `opts` asks for, in order: ports, RTU scans, TCP scans, probes, BLE listen.

    Raises `UsageError` (one line) for anything the installer named that cannot be used. `ble_backend` is
    bleak's `backend=` seam (tests pass the fake from `firmware_sims.ble`); `comports`/`by_id_dir` are the
    serial-port listing's seams.
    """
    from drivers.modbus.scan import RtuScanTransport, ScanError, ScanSettings, TcpScanTransport, scan_bus
    from drivers.serial_ports import list_serial_ports

    _check_paths([*opts.ports, *opts.rtu, *opts.probe])
    report = DiscoverReport(opts)
    listing: dict[str, Any] = {}
    if by_id_dir is not None:
        listing["by_id_dir"] = by_id_dir
    if comports is not None:
        listing["comports"] = comports
    report.ports = list_serial_ports([*opts.ports, *opts.rtu, *opts.probe], **listing)

    stream = progress_stream if progress_stream is not None else sys.stderr
    scanning = bool(opts.rtu or opts.tcp)
    profiles = load_profiles(opts.profile_dirs) if opts.guess_profiles and scanning else []
    settings = ScanSettings(
        first_id=opts.first_id,
        last_id=opts.last_id,
        attempts=opts.attempts,
        guess_profiles=opts.guess_profiles,
    )
    for n, port in enumerate(opts.rtu, start=1):
        bus_id = f"rtu{n}"
        transport = RtuScanTransport(
            port,
            baudrate=opts.baudrate,
            parity=_parity(opts.parity),
            stopbits=opts.stopbits,
            timeout_s=opts.timeout_s,
        )
        label = f"scan {bus_id} {port} {opts.baudrate} 8{opts.parity}{opts.stopbits}"
        try:
            async with transport:
                result = await scan_bus(transport, settings, profiles, progress=ProgressBar(stream, label))
        except ScanError as exc:
            raise UsageError(f"{exc.target}: {exc.reason}") from exc
        report.buses.append(
            BusReport(
                bus_id,
                "rtu",
                result,
                port=port,
                baudrate=opts.baudrate,
                parity=opts.parity,
                stopbits=opts.stopbits,
                timeout_s=opts.timeout_s,
            )
        )
    for n, target in enumerate(opts.tcp, start=1):
        bus_id = f"tcp{n}"
        tcp = TcpScanTransport(target.host, target.port, timeout_s=opts.timeout_s)
        label = f"scan {bus_id} {target.host}:{target.port}"
        try:
            async with tcp:
                result = await scan_bus(tcp, settings, profiles, progress=ProgressBar(stream, label))
        except ScanError as exc:
            raise UsageError(f"{exc.target}: {exc.reason}") from exc
        report.buses.append(
            BusReport(
                bus_id,
                "tcp",
                result,
                host=target.host,
                tcp_port=target.port,
                timeout_s=opts.timeout_s,
            )
        )

    probe_ports = _ports_to_probe(opts, report.ports)
    explicit = set(opts.probe)
    for port in probe_ports:
        probe = await _probe_port(port, opts)
        if probe.error is not None and port in explicit:
            raise UsageError(f"{port}: {probe.error}")
        report.probes.append(probe)

    if opts.ble_s is not None:
        report.ble = await _listen_ble(opts, ble_backend)
    return report


def _check_paths(paths: Sequence[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such port")


def _ports_to_probe(opts: DiscoverOptions, ports: Sequence[SerialPortInfo]) -> list[str]:
    """`--probe` ports, then with `--probe-all` every listed USB port not being scanned as an RTU line."""
    out = list(opts.probe)
    if opts.probe_all:
        busy = {os.path.realpath(p) for p in opts.rtu}
        out += [i.device for i in ports if i.usb and os.path.realpath(i.device) not in busy]
    return list(dict.fromkeys(out))


def _parity(text: str) -> typing.Literal["N", "E", "O"]:
    if text == "E":
        return "E"
    if text == "O":
        return "O"
    return "N"


async def _probe_port(port: str, opts: DiscoverOptions) -> ProbeReport:
    """MT-SICS first (a scale left streaming is then reset), M100 only if that found nothing."""
    from drivers.rfid.probe import probe_m100
    from drivers.scale.probe import probe_mtsics

    scale = await probe_mtsics(port, baudrate=opts.scale_baudrate, timeout_s=opts.probe_timeout_s)
    if scale.found or scale.error is not None:
        return ProbeReport(port, scale, None)
    rfid = await probe_m100(port, baudrate=opts.rfid_baudrate, timeout_s=opts.probe_timeout_s)
    return ProbeReport(port, scale, rfid)


async def _listen_ble(opts: DiscoverOptions, backend: type[BaseBleakScanner] | None) -> BleSurvey:
    from drivers.ble.scanner import BleakAdvertisementSource, ScannerSettings, ScannerUnavailable
    from drivers.ble.survey import survey_bthome

    source = BleakAdvertisementSource(ScannerSettings(adapter=opts.ble_adapter), backend=backend)
    assert opts.ble_s is not None  # noqa: S101 - the caller checked
    try:
        return await survey_bthome(source, opts.ble_s)
    except ScannerUnavailable as exc:
        raise UsageError(f"BLE: {exc.reason}") from exc


# --- JSON -------------------------------------------------------------------------------------------------


def _finding_json(f: UnitFinding) -> dict[str, Any]:
    g = f.guess
    return {
        "unit_id": f.unit_id,
        "status": f.status.value,
        "replies": dict(f.replies),
        "exception_code": f.exception_code,
        "profile": g.profile if g else None,
        "profile_weak": g.weak if g else False,
        "profile_reason": g.reason if g else None,
        "candidates": [
            {
                "profile": c.profile,
                "readable": c.readable,
                "channels": c.channels,
                "plausible": c.plausible,
                "all_zero": c.all_zero,
                "note": c.note,
            }
            for c in (g.checks if g else ())
        ],
        "note": f.note,
        "garbled": list(f.garbled_details),
    }


def report_json(report: DiscoverReport) -> dict[str, Any]:
    """The `--json` document (schema documented in docs/installer.md)."""
    buses = []
    for b in report.buses:
        r = b.result
        buses.append(
            {
                "bus_id": b.bus_id,
                "kind": b.kind,
                "target": r.target,
                "port": b.port,
                "host": b.host,
                "tcp_port": b.tcp_port,
                "baudrate": b.baudrate,
                "parity": b.parity,
                "stopbits": b.stopbits,
                "id_range": [r.first_id, r.last_id],
                "timeout_s": b.timeout_s,
                "duration_s": round(r.duration_s, 3),
                "requests": r.requests,
                "units": [_finding_json(f) for f in r.findings],
                "conflicts": r.conflicts,
                "answers_every_id": r.answers_every_id,
                "notes": list(r.notes),
            }
        )
    probes = []
    for p in report.probes:
        probes.append(
            {
                "port": p.port,
                "found": p.found,
                "error": p.error,
                "scale": {
                    "protocol": "mt-sics",
                    "baudrate": p.scale.baudrate,
                    "found": p.scale.found,
                    "serial_number": p.scale.serial_number,
                    "detail": p.scale.detail,
                    "lines": list(p.scale.lines),
                },
                "rfid": None
                if p.rfid is None
                else {
                    "protocol": "m100",
                    "baudrate": p.rfid.baudrate,
                    "found": p.rfid.found,
                    "hardware": p.rfid.hardware,
                    "software": p.rfid.software,
                    "detail": p.rfid.detail,
                },
            }
        )
    ble = None
    if report.ble is not None:
        ble = {
            "duration_s": report.ble.duration_s,
            "sensors": [s.as_dict() for s in sorted(report.ble.sensors.values(), key=lambda s: s.mac)],
            "other_adverts": report.ble.other_adverts,
        }
    return {
        "schema": JSON_SCHEMA_ID,
        "started_at": report.started_at.isoformat(timespec="seconds"),
        "found": report.found,
        "serial_ports": [p.as_dict() for p in report.ports],
        "modbus": buses,
        "probes": probes,
        "ble": ble,
    }


# --- the human table --------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    out = []
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + [row[-1]]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def _replies_text(f: UnitFinding) -> str:
    parts = [f"{k} {v}" for k, v in f.replies.items() if v]
    return ", ".join(parts)


def render_table(report: DiscoverReport) -> str:
    """The default, human output."""
    lines: list[str] = ["Serial ports"]
    if report.ports:
        rows = []
        for p in report.ports:
            usb = f"{p.vid:04x}:{p.pid or 0:04x}" if p.vid is not None else "-"
            what = " ".join(x for x in (p.manufacturer, p.product) if x) or p.description or ""
            if p.hint:
                what = f"{what} ({p.hint})" if what else p.hint
            if p.explicit:
                what = what or "given on the command line"
            rows.append([p.device, p.by_id or "-", usb, p.serial_number or "-", what])
        lines += _table(["DEVICE", "BY-ID", "USB", "SERIAL", "WHAT"], rows)
    else:
        lines.append("  none (USB adapters show up here; name a pty with --port)")
    for b in report.buses:
        r = b.result
        where = f"{b.port} {b.baudrate} 8{b.parity}{b.stopbits}" if b.kind == "rtu" else r.target
        lines += [
            "",
            f"Modbus {b.bus_id} {where}, ids {r.first_id}..{r.last_id}: {len(r.responders)} responding, "
            f"{len(r.conflicts)} address conflict{'' if len(r.conflicts) == 1 else 's'} "
            f"({r.duration_s:.1f} s, {r.requests} requests, "
            f"timeout {b.timeout_s:g} s)",
        ]
        if r.findings:
            rows = []
            shown = r.findings[:3] if r.answers_every_id else r.findings
            for f in shown:
                g = f.guess
                profile = (g.profile or "?") if g else "-"
                if g and g.weak:
                    profile += " (weak)"
                note = f.note or (g.reason if g else "")
                rows.append([str(f.unit_id), f.status.value, _replies_text(f), profile, note])
            if len(shown) < len(r.findings):
                rows.append(["…", "", "", "", f"{len(r.findings) - len(shown)} more ids answer the same way"])
            lines += _table(["ID", "STATUS", "REPLIES", "PROFILE", "NOTE"], rows)
        else:
            lines.append("  no replies: check wiring (A/B swapped?), baud rate, parity, and the id range")
        lines += [f"  note: {n}" for n in r.notes]
    if report.probes:
        lines += ["", "Probes (MT-SICS scale, then M100 UHF RFID)"]
        rows = []
        for probe in report.probes:
            if probe.found == "scale":
                found, detail = "MT-SICS scale", probe.scale.detail
            elif probe.found == "rfid" and probe.rfid is not None:
                found, detail = "M100 RFID", probe.rfid.detail
            elif probe.error is not None:
                found, detail = "error", probe.error
            else:
                found = "nothing"
                detail = probe.scale.detail + (f"; {probe.rfid.detail}" if probe.rfid is not None else "")
            rows.append([probe.port, found, detail])
        lines += _table(["PORT", "FOUND", "DETAIL"], rows)
    if report.ble is not None:
        ble = report.ble
        lines += ["", f"BLE BTHome sensors ({ble.duration_s:g} s listen, {ble.other_adverts} other adverts)"]
        if ble.sensors:
            rows = []
            for s in sorted(ble.sensors.values(), key=lambda s: s.mac):
                mass = f"{s.mass_kg:g} kg" if s.mass_kg is not None else "-"
                rssi = f"{s.rssi}" if s.rssi is not None else "-"
                best = f"{s.rssi_max}" if s.rssi_max is not None else "-"
                note = "encrypted (bind key needed)" if s.encrypted else (s.decode_error or "")
                if s.weak:
                    note = (note + "; " if note else "") + "weak signal: move the gateway or antenna closer"
                rows.append([s.mac, rssi, best, str(s.adverts), mass, note])
            lines += _table(["MAC", "RSSI", "BEST", "ADVERTS", "MASS", "NOTE"], rows)
        else:
            lines.append("  none heard")
    return "\n".join(lines) + "\n"


# --- the draft config -------------------------------------------------------------------------------------

BINS_PLACEHOLDER: Final = "bins: []   # TODO: add the bins — delete this line and uncomment the example below"
EXAMPLE_BIN_START: Final = "## example bins: remove '# ' from each line down to the end marker, then edit"
EXAMPLE_BIN_END: Final = "## end of example bins"
"""Markers start with '## ' so that uncommenting the whole block by accident leaves them comments."""


def _dump_entries(entries: Sequence[dict[str, Any]], *, comment: bool = False) -> list[str]:
    text = yaml.safe_dump(list(entries), default_flow_style=False, sort_keys=False, allow_unicode=True)
    prefix = "# " if comment else ""
    return [f"{prefix}{line}" for line in text.splitlines()]


def _item_type(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    return args[0] if typing.get_origin(annotation) is list and args else annotation


def _fit_entry(item_type: Any, variants: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The first variant this build's schema accepts (keys it does not know dropped), or None and why not."""
    from pydantic import BaseModel, TypeAdapter, ValidationError

    adapter: TypeAdapter[Any] = TypeAdapter(item_type)
    known = (
        set(item_type.model_fields)
        if isinstance(item_type, type) and issubclass(item_type, BaseModel)
        else None
    )
    why = "no variant tried"
    for variant in variants:
        entry = {k: v for k, v in variant.items() if v is not None and (known is None or k in known)}
        try:
            adapter.validate_python(entry)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            why = f"{loc}: {err['msg']}" if loc else err["msg"]
            continue
        return entry, ""
    return None, why


@dataclass(frozen=True, slots=True)
class _Found:
    """One device of a family, for the draft: entries to try against the schema, and a fallback to show."""

    comment: str
    variants: list[dict[str, Any]]
    """Honest entries (facts only, no placeholders), most specific first; keys the schema lacks are dropped."""
    suggestion: dict[str, Any]
    """Shown commented out when no variant validates: the facts plus TODO placeholders for the rest."""


def _family_findings(report: DiscoverReport) -> dict[str, list[_Found]]:
    """Per config section, the devices found (field names as in `edge.config`, alternatives tried after)."""
    from drivers.serial_ports import stable_path

    out: dict[str, list[_Found]] = {"scales": [], "scanners": [], "rfid_readers": [], "ble_sensors": []}
    n_scale = n_rfid = 0
    for p in report.probes:
        port = stable_path(p.port)
        if p.found == "scale":
            n_scale += 1
            base = {"id": f"scale{n_scale}", "port": port, "baudrate": p.scale.baudrate}
            out["scales"].append(
                _Found(
                    f"{p.port}: {p.scale.detail}",
                    [{**base, "protocol": "mtsics"}, {**base, "protocol": "mt-sics"}, base],
                    {**base, "protocol": "mtsics"},
                )
            )
        elif p.found == "rfid" and p.rfid is not None:
            n_rfid += 1
            base = {"id": f"rfid{n_rfid}", "port": port, "protocol": "m100", "baudrate": p.rfid.baudrate}
            out["rfid_readers"].append(
                _Found(
                    f"{p.port}: {p.rfid.detail}",
                    [base],
                    {**base, "antennas": [{"antenna": 1, "zone": "TODO", "kind": "shelf"}]},
                )
            )
    for n, info in enumerate((i for i in report.ports if i.likely_scanner), start=1):
        base = {"id": f"scanner{n}", "port": info.stable_path}
        out["scanners"].append(
            _Found(
                f"{info.device}: {info.hint} (recognised by its USB vendor id; scanners cannot be probed)",
                [base],
                {**base, "role": "TODO: lane, handheld or receiving"},
            )
        )
    if report.ble is not None:
        for n, s in enumerate(report.ble_sensors(), start=1):
            base = {"id": f"ble{n}", "mac": s.mac, "keyed": s.encrypted}
            note = "encrypted: put its bind key in the `ble.keys_file`" if s.encrypted else "plaintext"
            out["ble_sensors"].append(_Found(f"{s.mac}: best RSSI {s.rssi_max} dBm, {note}", [base], base))
    return out


def draft_config(report: DiscoverReport, *, store_id: str = "TODO-store", schema: Any = None) -> str:
    """A store-config draft: buses and transmitters from the scans, the other families where this build's
    schema has a section for them (else as comments), bins as an empty list plus a commented example.

    Every entry written uncommented has passed the schema's own validation; what could not (a transmitter
    without a profile guess, an RFID reader whose antenna zone only the installer knows, a scanner's role) is
    written as a commented suggestion with the reason. Store-wide checks (`check-config`) still apply: e.g.
    an encrypted BLE sensor needs `ble.keys_file`.

    `schema` is the pydantic model of the store config (default `edge.config.StoreConfig`); the families'
    sections are looked up in its `model_fields` at run time, so the draft follows the schema it runs with.
    """
    from drivers.modbus.scan import UnitStatus
    from drivers.serial_ports import stable_path

    if schema is None:
        from edge.config import StoreConfig

        schema = StoreConfig
    fields = schema.model_fields
    when = report.started_at.isoformat(timespec="seconds")
    out = [
        f"# Draft store config written by `shelfgate discover` at {when}.",
        "# Review every TODO, add the bins, then check it with:  shelfgate check-config THIS_FILE",
        f"store_id: {store_id}   # TODO: the store's id at the hub",
        "buses:",
    ]
    bus_entries: list[dict[str, Any]] = []
    for b in report.buses:
        if b.kind == "rtu":
            assert b.port is not None  # noqa: S101 - set for RTU buses
            bus_entries.append(
                {
                    "id": b.bus_id,
                    "kind": "rtu",
                    "port": stable_path(b.port),
                    "baudrate": b.baudrate,
                    "parity": b.parity,
                    "stopbits": b.stopbits,
                }
            )
        else:
            bus_entries.append({"id": b.bus_id, "kind": "tcp", "host": b.host, "port": b.tcp_port})
    if bus_entries:
        out += ["  " + line for line in _dump_entries(bus_entries)]
    else:
        out[-1] = "buses: []   # TODO: no Modbus bus was scanned (use --rtu PORT or --tcp HOST:PORT)"
    tx_lines: list[str] = []
    for b in report.buses:
        findings = b.result.findings
        if b.result.answers_every_id:
            tx_lines.append(f"# {b.bus_id}: {b.result.notes[0]}")
            findings = findings[:1]
        for f in findings:
            tx_id = f"tx-{b.bus_id}-{f.unit_id}"
            if f.status is not UnitStatus.OK:
                tx_lines.append(f"# unit {f.unit_id} on {b.bus_id} left out: {f.note}")
                continue
            g = f.guess
            tx_entry = {
                "id": tx_id,
                "bus": b.bus_id,
                "unit_id": f.unit_id,
                "profile": g.profile if g else None,
            }
            if g is not None and g.profile is not None:
                weak = " (weak: check it)" if g.weak else ""
                tx_lines.append(f"# unit {f.unit_id} on {b.bus_id}: profile guessed{weak} from {g.reason}")
                tx_lines += _dump_entries([tx_entry])
            else:
                why = g.reason if g else "profile guess turned off"
                tx_lines.append(f"# unit {f.unit_id} on {b.bus_id}: TODO pick its profile ({why})")
                tx_lines += _dump_entries([{**tx_entry, "profile": "TODO"}], comment=True)
    if any(not line.startswith("#") for line in tx_lines):
        out.append("transmitters:")
    else:
        out.append("transmitters: []   # TODO: no transmitter with a known profile was found")
    out += ["  " + line for line in tx_lines]

    for section, found in _family_findings(report).items():
        if not found:
            continue
        field_info = fields.get(section)
        if field_info is None:
            out.append(f"# {section} found (this gateway's config has no `{section}` section yet):")
            for item in found:
                out.append(f"#   {item.comment}")
                out += ["  " + line for line in _dump_entries([item.suggestion], comment=True)]
            continue
        item_type = _item_type(field_info.annotation)
        good: list[str] = []
        bad: list[str] = []
        for item in found:
            entry, why = _fit_entry(item_type, item.variants)
            if entry is not None:
                good += [f"# {item.comment}", *_dump_entries([entry])]
            else:
                bad += [f"# {item.comment} — TODO: complete it, then uncomment ({why})"]
                bad += _dump_entries([item.suggestion], comment=True)
        out.append(f"{section}:" if good else f"# {section}:")
        out += ["  " + line for line in good + bad]
        if section == "ble_sensors" and "ble" in fields and any(s.encrypted for s in report.ble_sensors()):
            out.append(
                "# ble: {keys_file: ble-keys.yaml}   # TODO: encrypted sensors' bind keys live in this "
                "secrets file (mode 0600), never in this config"
            )

    first_tx = next(
        (
            f"tx-{b.bus_id}-{f.unit_id}"
            for b in report.buses
            for f in b.result.findings
            if f.status is UnitStatus.OK and f.guess is not None and f.guess.profile is not None
        ),
        "TODO-transmitter",
    )
    out += [
        BINS_PLACEHOLDER,
        EXAMPLE_BIN_START,
        "# bins:",
        "#   - id: BIN-01",
        '#     sku: "TODO"',
        "#     name: {zh: TODO, en: TODO}",
        "#     unit_weight_g: 100",
        "#     safety_stock: 2",
        "#     max_stock: 10",
        f"#     device: {first_tx}",
        "#     channel: 0",
        EXAMPLE_BIN_END,
    ]
    return "\n".join(out) + "\n"


def write_draft(path: Path, text: str, *, force: bool) -> None:
    """Write atomically (the gateway's own temp + fsync + rename); refuse to replace a file unless `force`."""
    from edge.calibration import write_atomic

    if path.exists() and not force:
        raise UsageError(f"{path} exists; not overwriting it without --force")
    folder = path.parent if str(path.parent) else Path()
    if not folder.is_dir():  # checked first: write_atomic would create it, a typo'd folder should be refused
        raise UsageError(f"{path}: folder {folder} does not exist")
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from exc


# --- CLI --------------------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Register `discover` on the CLI's subparsers."""
    d = sub.add_parser(
        "discover",
        help="find serial ports, Modbus transmitters, scales, RFID modules and BLE sensors",
        description="Without options: list serial ports. See docs/installer.md.",
    )
    g = d.add_argument_group("serial ports")
    g.add_argument("--port", action="append", metavar="PATH", help="also list this port (e.g. a pty)")
    m = d.add_argument_group("Modbus scan")
    m.add_argument("--rtu", action="append", metavar="PORT", help="scan the RS-485 line on this serial port")
    m.add_argument(
        "--tcp", action="append", metavar="HOST[:PORT]", help="scan a Modbus TCP endpoint (port 502)"
    )
    m.add_argument("--baud", type=int, default=19200, help="RTU baud rate (default 19200)")
    m.add_argument("--parity", choices=("N", "E", "O"), default="N", help="RTU parity (default N)")
    m.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="RTU stop bits (default 1)")
    m.add_argument("--ids", default="1-247", metavar="FIRST-LAST", help="unit ids to scan (default 1-247)")
    m.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait per id (default 0.1)"
    )
    m.add_argument("--attempts", type=int, default=3, help="requests per id when replies are garbled (3)")
    m.add_argument("--no-profile-guess", action="store_true", help="do not read registers to guess profiles")
    m.add_argument("--profiles", action="append", type=Path, metavar="DIR", help="more profile files")
    p = d.add_argument_group("scale and RFID probes")
    p.add_argument("--probe", action="append", nargs="+", metavar="PORT", help="probe these serial ports")
    p.add_argument("--probe-all", action="store_true", help="probe every listed USB serial port")
    p.add_argument("--probe-timeout", type=float, default=0.5, help="seconds per probe (default 0.5)")
    p.add_argument("--scale-baud", type=int, default=SCALE_BAUDRATE, help="MT-SICS baud rate (9600)")
    p.add_argument("--rfid-baud", type=int, default=RFID_BAUDRATE, help="M100 baud rate (115200)")
    b = d.add_argument_group("BLE")
    b.add_argument("--ble", type=float, metavar="SECONDS", help="listen for BTHome sensors this long")
    b.add_argument("--ble-adapter", metavar="HCI", help="BlueZ adapter, e.g. hci0 (default: the default one)")
    o = d.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print JSON instead of tables")
    o.add_argument("--write-config", type=Path, metavar="FILE", help="write a draft store config to FILE")
    o.add_argument("--force", action="store_true", help="let --write-config replace an existing file")
    o.add_argument("--store-id", default="TODO-store", help="store_id for the draft (default TODO-store)")
    d.set_defaults(func=run)


def _check_output(args: argparse.Namespace) -> None:
    """Refuse before scanning what would only fail after it (a 30 s scan lost to an existing file)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", args.store_id):
        raise UsageError(f"--store-id {args.store_id!r}: letters, digits, '_', '.', '-' (at most 64)")
    if args.write_config is not None and args.write_config.exists() and not args.force:
        raise UsageError(f"{args.write_config} exists; not overwriting it without --force")


def run(args: argparse.Namespace, **seams: Any) -> int:
    """The command: exit 0 found, 1 nothing found, 2 usage or I/O error (one line on stderr)."""
    try:
        opts = options_from_args(args)
        _check_output(args)
        report = asyncio.run(discover(opts, **seams))
        if args.json:
            print(json.dumps(report_json(report), ensure_ascii=False, indent=2))
        else:
            print(render_table(report), end="")
        if args.write_config is not None:
            write_draft(args.write_config, draft_config(report, store_id=args.store_id), force=args.force)
            print(f"draft config written to {args.write_config}", file=sys.stderr)
    except UsageError as exc:
        print(f"shelfgate discover: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # Ctrl-C mid-scan: asyncio.run has cancelled and closed everything already
        print("\nshelfgate discover: interrupted", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_FOUND if report.found else EXIT_NOTHING
