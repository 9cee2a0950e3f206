"""Store configuration: one YAML file validated once, at start, into frozen typed models.

Every error names its key path and the line in the file (STYLE.md rule 11). Duplicates (bin ids, device ids,
unit ids on one bus, channels) and contradictions (`safety_stock` ≥ `max_stock`, a channel beyond the
profile) are errors, never warnings. Register profiles are data files (`profiles/NAME.yaml` next to the store
config, then the project's `config/profiles/`), turned into the driver's frozen `RegisterMap`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drivers.modbus.protocol import RegisterMap, StatusPoint, ValueType, WeightPoint, WordOrder

PROJECT_PROFILES = Path(__file__).resolve().parent.parent / "config" / "profiles"

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LocalizedName(_Frozen):
    """A display name in Simplified Chinese and English (staff pages show the one the user picked)."""

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class RtuBus(_Frozen):
    """An RS-485 line driven through a serial port (or a pty in the simulator)."""

    id: Identifier
    kind: Literal["rtu"]
    port: str = Field(min_length=1, description="serial device path, e.g. /dev/serial/by-id/…")
    baudrate: int = Field(default=9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(default=0.3, gt=0, le=10)
    turnaround_s: float = Field(default=0.0, ge=0, le=1, description="extra quiet time after each exchange")


class TcpBus(_Frozen):
    """A Modbus TCP gateway or transmitter."""

    id: Identifier
    kind: Literal["tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, gt=0, lt=65536)
    timeout_s: float = Field(default=1.0, gt=0, le=30)


Bus = Annotated[RtuBus | TcpBus, Field(discriminator="kind")]


class Transmitter(_Frozen):
    """A Modbus weight transmitter: one unit id on one bus, read through a register profile."""

    id: Identifier
    bus: Identifier = Field(description="id of the bus it is wired to")
    unit_id: int = Field(ge=1, le=247, description="Modbus device address (1..247, Serial Line v1.02 §2.2)")
    profile: str = Field(min_length=1, description="register profile name (config/profiles/NAME.yaml)")
    poll_interval_s: float = Field(default=0.2, gt=0, le=60)


class Calibration(_Frozen):
    """Two-point calibration: grams = (value - zero) * span_g_per_unit, `value` in profile units."""

    zero: float = 0.0
    span_g_per_unit: float = Field(default=1.0, gt=0)
    calibrated_at: str | None = None


class Bin(_Frozen):
    """One SKU at one place on the shelf, weighed by one transmitter channel."""

    id: Identifier
    sku: str = Field(min_length=1, max_length=32, description="GTIN-14 or store SKU")
    name: LocalizedName
    unit_weight_g: float = Field(gt=0)
    unit_weight_spread_g: float = Field(
        default=0.0, ge=0, description="standard deviation of one item's mass"
    )
    tare_g: float = Field(default=0.0, ge=0, description="container/tray mass on the plate, not counted")
    calibration: Calibration = Calibration()
    safety_stock: int = Field(ge=0, description="a count below this raises a `low` alert")
    max_stock: int = Field(gt=0, description="a count above this raises an `over` alert")
    device: Identifier = Field(description="id of the transmitter weighing this bin")
    channel: int = Field(ge=0, description="the transmitter channel (0-based)")
    location: str = Field(default="", description="where staff find it, e.g. `aisle A, shelf 2`")


class Broker(_Frozen):
    """The MQTT broker the uplink publishes to."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, gt=0, lt=65536)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_file: Path | None = Field(default=None, description="secrets live in files, not in this config")
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class Api(_Frozen):
    """The local REST API and staff pages."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, lt=65536, description="0 picks a free port")


class Alerts(_Frozen):
    """Alert rule tuning shared by all bins."""

    dwell_s: float = Field(default=2.0, ge=0, description="a condition must hold this long to raise or clear")
    hysteresis_items: int = Field(
        default=1, ge=0, description="extra items needed above a threshold to clear"
    )
    silent_after_s: float = Field(
        default=10.0, gt=0, description="no reading for this long is a sensor fault"
    )


class Bridge(_Frozen):
    """Uplink tuning."""

    heartbeat_s: float = Field(default=30.0, gt=0, le=3600)
    batch_max_events: int = Field(default=200, ge=1, le=5000)
    publish_timeout_s: float = Field(default=10.0, gt=0)


class StoreConfig(_Frozen):
    """A whole store: the file `shelfgate run --config FILE` reads."""

    store_id: Identifier = Field(description="the store's id on the wire and at the hub (topic root)")
    gateway_id: Identifier | None = Field(default=None, description="defaults to `{store_id}-gw`")
    data_dir: Path = Field(default=Path("var"), description="SQLite database folder (relative to this file)")
    buses: list[Bus] = Field(min_length=1, description="RS-485 lines and Modbus TCP endpoints")
    transmitters: list[Transmitter] = Field(min_length=1, description="weight transmitters on the buses")
    bins: list[Bin] = Field(min_length=1, description="one SKU at one place, on one transmitter channel")
    broker: Broker = Broker()
    api: Api = Api()
    alerts: Alerts = Alerts()
    bridge: Bridge = Bridge()

    @property
    def effective_gateway_id(self) -> str:
        """The gateway's identity on the wire; defaults to `{store_id}-gw`."""
        return self.gateway_id or f"{self.store_id}-gw"


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated store config with the register maps its transmitters name."""

    store: StoreConfig
    profiles: Mapping[str, RegisterMap]
    path: Path
    version: str
    """sha256 of the file bytes (first 12 hex digits), reported in birth and heartbeat."""

    def profile_for(self, transmitter_id: str) -> RegisterMap:
        """The register map of one transmitter."""
        tx = next(t for t in self.store.transmitters if t.id == transmitter_id)
        return self.profiles[tx.profile]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file."""

    path: str
    """Dotted key path, e.g. `bins[3].safety_stock`."""
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<file>'}: {self.message}"


class ConfigError(Exception):
    """A config file that cannot start a gateway; carries every issue found, not only the first."""

    def __init__(self, file: Path, issues: Sequence[ConfigIssue]) -> None:
        self.file = file
        self.issues = list(issues)
        super().__init__(f"{file}: {len(self.issues)} error(s)\n" + "\n".join(f"  {i}" for i in self.issues))


# --- YAML with line numbers ------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


def _line_index(node: yaml.Node, loc: Loc, out: dict[Loc, int]) -> None:
    """Record the 1-based line of every key/item so a pydantic error location maps back to the file."""
    out.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*loc, key)] = key_node.start_mark.line + 1
            _line_index(value_node, (*loc, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*loc, i), out)


def _format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _nearest_line(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


# libyaml (C) when PyYAML was built with it: a 2 000-bin store file loads in ~1 s instead of ~10 s and without
# the tens of MB of heap the pure-Python parser leaves behind (bench/bench_rss.py).
_SafeLoader: type[yaml.SafeLoader] = (
    yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader  # type: ignore[assignment]
)


class _LineIndex(Mapping[Loc, int]):
    """Key path → 1-based line, built only when an error needs a line number.

    Composing a second node tree of a large store file costs seconds and memory on a Pi; a valid file never
    pays for it.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: dict[Loc, int] | None = None

    def _index(self) -> dict[Loc, int]:
        if self._lines is None:
            lines: dict[Loc, int] = {}
            node = yaml.compose(self._text, Loader=_SafeLoader)
            if node is not None:
                _line_index(node, (), lines)
            self._lines = lines
        return self._lines

    def __getitem__(self, key: Loc) -> int:
        return self._index()[key]

    def __iter__(self) -> Iterator[Loc]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._index())


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses duplicate mapping keys (YAML 1.2 §3.2.1.1: keys are unique)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _read_yaml(path: Path) -> tuple[Any, Mapping[Loc, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [ConfigIssue("", None, f"cannot read file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [ConfigIssue("", None, f"not UTF-8 text: {exc.reason}")]) from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(path, [ConfigIssue("", line, f"YAML: {exc.problem or exc}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(path, [ConfigIssue("", None, f"YAML: {exc}")]) from exc
    return data, _LineIndex(text)


# --- register profiles -------------------------------------------------------------------------------------


class _WeightPointModel(_Frozen):
    address: int = Field(ge=0, le=0xFFFF)
    type: ValueType = ValueType.INT32
    word_order: WordOrder = WordOrder.ABCD
    stride: int = Field(default=2, ge=1)
    scale: float = Field(default=1.0, gt=0)


class _StatusBits(_Frozen):
    stable: int | None = Field(default=None, ge=0, le=15)
    overload: int | None = Field(default=None, ge=0, le=15)
    fault: int | None = Field(default=None, ge=0, le=15)


class _StatusPointModel(_Frozen):
    address: int = Field(ge=0, le=0xFFFF)
    stride: int = Field(default=1, ge=1)
    bits: _StatusBits = _StatusBits()


class _ProfileModel(_Frozen):
    name: str
    description: str = ""
    channels: int = Field(ge=1, le=128)
    weight: _WeightPointModel
    status: _StatusPointModel | None = None

    def to_register_map(self) -> RegisterMap:
        w, s = self.weight, self.status
        return RegisterMap(
            name=self.name,
            description=self.description,
            channels=self.channels,
            weight=WeightPoint(w.address, w.type, w.word_order, w.stride, w.scale),
            status=None
            if s is None
            else StatusPoint(s.address, s.stride, s.bits.stable, s.bits.overload, s.bits.fault),
        )


def load_profile(path: Path) -> RegisterMap:
    """Load one register profile file."""
    data, lines = _read_yaml(path)
    try:
        return _ProfileModel.model_validate(data).to_register_map()
    except ValidationError as exc:
        raise ConfigError(path, _issues(exc, lines)) from exc


def find_profile(name: str, config_dir: Path) -> Path | None:
    """`profiles/NAME.yaml` beside the store config, else the project's bundled profile."""
    for folder in (config_dir / "profiles", PROJECT_PROFILES):
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


# --- the store config --------------------------------------------------------------------------------------


def _issues(exc: ValidationError, lines: Mapping[Loc, int]) -> list[ConfigIssue]:
    out = []
    for err in exc.errors():
        # Discriminated unions add the tag ('rtu'/'tcp') to the location; it is not a key in the file.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("rtu", "tcp")))
        msg = err["msg"].removeprefix("Value error, ")
        out.append(ConfigIssue(_format_loc(loc), _nearest_line(loc, lines), msg))
    return out


def _cross_checks(
    store: StoreConfig, config_dir: Path, lines: Mapping[Loc, int]
) -> tuple[list[ConfigIssue], dict[str, RegisterMap]]:
    issues: list[ConfigIssue] = []

    def issue(loc: Loc, msg: str) -> None:
        issues.append(ConfigIssue(_format_loc(loc), _nearest_line(loc, lines), msg))

    def dupes(items: Sequence[Any], key: str, attr: str, what: str) -> None:
        first: dict[Any, int] = {}
        for i, item in enumerate(items):
            value = getattr(item, attr)
            if value in first:
                issue((key, i, attr), f"duplicate {what} {value!r} (first at {key}[{first[value]}])")
            else:
                first[value] = i

    dupes(store.buses, "buses", "id", "bus id")
    dupes(store.transmitters, "transmitters", "id", "transmitter id")
    dupes(store.bins, "bins", "id", "bin id")

    buses = {b.id: b for b in store.buses}
    profiles: dict[str, RegisterMap] = {}
    unit_ids: dict[tuple[str, int], int] = {}
    for i, tx in enumerate(store.transmitters):
        if tx.bus not in buses:
            issue(("transmitters", i, "bus"), f"unknown bus {tx.bus!r} (buses: {', '.join(buses)})")
        key = (tx.bus, tx.unit_id)
        if key in unit_ids:
            issue(
                ("transmitters", i, "unit_id"),
                f"unit id {tx.unit_id} already used on bus {tx.bus!r} by transmitters[{unit_ids[key]}]",
            )
        else:
            unit_ids[key] = i
        if tx.profile not in profiles:
            found = find_profile(tx.profile, config_dir)
            if found is None:
                issue(("transmitters", i, "profile"), f"no profile file {tx.profile}.yaml")
                continue
            try:
                profiles[tx.profile] = load_profile(found)
            except ConfigError as exc:
                for sub in exc.issues:
                    issue(("transmitters", i, "profile"), f"profile {found}: {sub}")

    devices = {t.id: t for t in store.transmitters}
    channels: dict[tuple[str, int], int] = {}
    for i, b in enumerate(store.bins):
        if b.safety_stock >= b.max_stock:
            issue(
                ("bins", i, "safety_stock"),
                f"safety_stock ({b.safety_stock}) must be below max_stock ({b.max_stock})",
            )
        tx_or_none = devices.get(b.device)
        if tx_or_none is None:
            issue(("bins", i, "device"), f"unknown device {b.device!r}")
            continue
        rmap = profiles.get(tx_or_none.profile)
        if rmap is not None and b.channel >= rmap.channels:
            issue(
                ("bins", i, "channel"),
                f"channel {b.channel} outside 0..{rmap.channels - 1} of profile {rmap.name!r}",
            )
        key = (b.device, b.channel)
        if key in channels:
            issue(
                ("bins", i, "channel"),
                f"channel {b.channel} of {b.device!r} already used by bins[{channels[key]}]",
            )
        else:
            channels[key] = i
    return issues, profiles


def load_config(path: str | Path) -> LoadedConfig:
    """Read, validate and cross-check a store config; raise ConfigError listing every issue."""
    file = Path(path)
    data, lines = _read_yaml(file)
    if not isinstance(data, dict):
        raise ConfigError(
            file, [ConfigIssue("", 1, "the file must be a mapping of keys (store_id, buses, …)")]
        )
    try:
        store = StoreConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(file, _issues(exc, lines)) from exc
    issues, profiles = _cross_checks(store, file.parent, lines)
    if issues:
        raise ConfigError(file, issues)
    if not store.data_dir.is_absolute():
        store = store.model_copy(update={"data_dir": (file.parent / store.data_dir).resolve()})
    version = hashlib.sha256(file.read_bytes()).hexdigest()[:12]
    return LoadedConfig(store=store, profiles=profiles, path=file.resolve(), version=version)
