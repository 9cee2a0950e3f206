"""What to simulate: buses, transmitters, the other store devices, and the bins on their channels, as frozen data.

Beyond the Modbus shelves a layout may hold scales (`SimScale`), barcode scanners (`SimScanner`, scanning the
layout's `codes`), UHF RFID readers (`SimRfidReader`, one zone each, with the tags in their field at start)
and BLE shelf sensors (`SimBleSensor`); a bin on a BLE sensor is a `SimBin` whose `device_id` is the sensor's.

The layout is deliberately independent of the gateway's config (`edge/config.py`): the simulator may
import only `drivers` (import-linter contract "simulators build only on drivers"), so the CLI maps a store
config into these types, and a layout can also be saved as JSON and served on its own
(`shelfgate sim --layout FILE.json`).

Register maps are the same `drivers.modbus.protocol.RegisterMap` objects the gateway decodes with, so the two
sides can never disagree about a register layout (STYLE.md rule 14).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from drivers.modbus.protocol import RegisterMap, StatusPoint, ValueType, WeightPoint, WordOrder
from drivers.rfid.epc import encode_sgtin96

LAYOUT_FORMAT = 1
"""Version of the JSON document `layout_to_json` writes; bumped on incompatible changes."""


@dataclass(frozen=True, slots=True)
class SimBin:
    """One bin on one transmitter channel, with the physics of its items and its load cell.

    The transmitter reports `value = zero + gross_g / span_g_per_unit` in profile units: the inverse of the
    gateway's two-point calibration `grams = (value - zero) * span_g_per_unit` (edge/config.py `Calibration`).
    """

    bin_id: str
    device_id: str
    channel: int
    unit_weight_g: float
    unit_weight_spread_g: float
    """Standard deviation of one item's mass; each item on the shelf draws its own mass once."""
    tare_g: float
    zero: float
    span_g_per_unit: float
    safety_stock: int
    max_stock: int
    initial_count: int
    capacity_g: float | None = None
    """Gross load above which the transmitter raises its overload bit; None = 2 × (tare + max_stock items)."""

    def __post_init__(self) -> None:
        if self.unit_weight_g <= 0:
            raise ValueError(f"bin {self.bin_id}: unit_weight_g must be positive")
        if self.unit_weight_spread_g < 0 or self.tare_g < 0:
            raise ValueError(f"bin {self.bin_id}: unit_weight_spread_g and tare_g must not be negative")
        if self.span_g_per_unit <= 0:
            raise ValueError(f"bin {self.bin_id}: span_g_per_unit must be positive")
        if self.initial_count < 0 or self.channel < 0:
            raise ValueError(f"bin {self.bin_id}: initial_count and channel must not be negative")

    @property
    def effective_capacity_g(self) -> float:
        """The overload threshold actually used."""
        if self.capacity_g is not None:
            return self.capacity_g
        return 2.0 * (self.tare_g + self.max_stock * self.unit_weight_g)


@dataclass(frozen=True, slots=True)
class SimTransmitter:
    """A Modbus weight transmitter: one unit id on one bus, laid out by a register map."""

    device_id: str
    bus_id: str
    unit_id: int
    register_map: RegisterMap

    def __post_init__(self) -> None:
        if not 1 <= self.unit_id <= 247:
            raise ValueError(f"transmitter {self.device_id}: unit id {self.unit_id} outside 1..247")


@dataclass(frozen=True, slots=True)
class SimBus:
    """One bus: an RS-485 line (served through a pty null modem) or a Modbus TCP listener on 127.0.0.1."""

    bus_id: str
    kind: Literal["rtu", "tcp"]
    port: int | None = None
    """TCP port to listen on; None picks a free one. Ignored for RTU (the pty path is made at start)."""
    baudrate: int = 19200
    """RTU only: the line speed the simulated transmitters answer at."""


@dataclass(frozen=True, slots=True)
class SimScale:
    """A scale on its own serial line (a pty null modem): MT-SICS or NCI/ECR."""

    device_id: str
    protocol: Literal["mtsics", "nci"] = "mtsics"
    serial_number: str = "0123456789"
    """What an MT-SICS scale answers to `I4` / `@`."""
    lane: str | None = None


@dataclass(frozen=True, slots=True)
class SimScanner:
    """A barcode scanner on its own serial line; `role` and `lane` decide what the scenario scans with it."""

    device_id: str
    role: Literal["lane", "handheld", "receiving"] = "lane"
    lane: str | None = None


@dataclass(frozen=True, slots=True)
class SimCode:
    """A code the store's scanners can read: data, the AIM symbology identifier sent before it, and whether it
    is a member card/QR (scanned at the start of a checkout) rather than a product."""

    data: str
    symbology: str | None = "]E0"
    member: bool = False


@dataclass(frozen=True, slots=True)
class SimRfidReader:
    """A serial UHF module covering one zone; `tags` are the EPCs in its field at start."""

    device_id: str
    zone: str
    zone_kind: Literal["shelf", "exit"] = "shelf"
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SimBleSensor:
    """A BTHome shelf sensor; its bins are `SimBin`s with this `device_id` (channel = mass object)."""

    device_id: str
    mac: str
    keyed: bool = False
    """Encrypts its adverts; the key itself is given to `SimStore(ble_keys=…)`, never stored in a layout."""
    channels: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.channels <= 8:
            raise ValueError(f"BLE sensor {self.device_id}: channels must be 1..8")


@dataclass(frozen=True, slots=True)
class ShelfPhysics:
    """Load-cell and transmitter behaviour shared by every channel.

    Defaults follow DOMAIN.md "Device facts": transmitters sample at 10–80 samples/s; the plate settles within
    ~0.4–0.8 s after an item is moved, with a short overshoot.
    """

    creep_g_per_h: float = 0.5
    """Slow drift of the reading under load (load-cell creep), grams per hour since the start."""
    settle_s: float = 0.6
    """2 % settling time of the plate's step response after a pick or put."""
    overshoot: float = 0.2
    """Peak overshoot of that step response, as a fraction of the mass moved (0 < overshoot < 1)."""
    sample_rate_hz: float = 50.0
    """Transmitter output rate; the register value holds between samples."""
    stable_window_s: float = 0.3
    """The transmitter calls its output stable when it varied less than `stable_band_g` over this window."""
    stable_band_g: float | None = None
    """Motion band of the stability detector; None = max(6 × noise_g, 0.5 g), wide enough that noise alone
    rarely breaks stability (the range of ~15 Gaussian samples stays below 6 σ in > 99 % of windows)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.overshoot < 1.0:
            raise ValueError("overshoot must be between 0 and 1 (exclusive)")
        if self.settle_s <= 0 or self.sample_rate_hz <= 0 or self.stable_window_s <= 0:
            raise ValueError("settle_s, sample_rate_hz and stable_window_s must be positive")

    def band_g(self, noise_g: float) -> float:
        """The stability band used with this noise level."""
        return self.stable_band_g if self.stable_band_g is not None else max(6.0 * noise_g, 0.5)


@dataclass(frozen=True, slots=True)
class SimLayout:
    """Everything one simulated store serves."""

    buses: tuple[SimBus, ...]
    transmitters: tuple[SimTransmitter, ...]
    bins: tuple[SimBin, ...]
    noise_g: float = 1.0
    """Standard deviation of the Gaussian noise on every plate, grams."""
    seed: int = 0
    physics: ShelfPhysics = field(default_factory=ShelfPhysics)
    scales: tuple[SimScale, ...] = ()
    scanners: tuple[SimScanner, ...] = ()
    rfid_readers: tuple[SimRfidReader, ...] = ()
    ble_sensors: tuple[SimBleSensor, ...] = ()
    codes: tuple[SimCode, ...] = ()
    """What the scanners scan: the store's products (and GS1 codes with batch/expiry) and member codes."""

    def __post_init__(self) -> None:
        bus_ids = [b.bus_id for b in self.buses]
        _no_duplicates("bus id", bus_ids)
        _no_duplicates(
            "device id",
            [t.device_id for t in self.transmitters]
            + [d.device_id for d in self.scales]
            + [d.device_id for d in self.scanners]
            + [d.device_id for d in self.rfid_readers]
            + [d.device_id for d in self.ble_sensors],
        )
        _no_duplicates("bin id", [b.bin_id for b in self.bins])
        _no_duplicates("unit id", [(t.bus_id, t.unit_id) for t in self.transmitters])
        _no_duplicates("channel", [(b.device_id, b.channel) for b in self.bins])
        _no_duplicates("BLE MAC", [s.mac for s in self.ble_sensors])
        channels = {t.device_id: t.register_map.channels for t in self.transmitters}
        channels.update({s.device_id: s.channels for s in self.ble_sensors})
        for tx in self.transmitters:
            if tx.bus_id not in bus_ids:
                raise ValueError(f"transmitter {tx.device_id}: unknown bus {tx.bus_id!r}")
        for b in self.bins:
            n = channels.get(b.device_id)
            if n is None:
                raise ValueError(f"bin {b.bin_id}: unknown device {b.device_id!r}")
            if b.channel >= n:
                raise ValueError(f"bin {b.bin_id}: channel {b.channel} outside 0..{n - 1}")
        if self.noise_g < 0:
            raise ValueError("noise_g must not be negative")

    def transmitters_on(self, bus_id: str) -> tuple[SimTransmitter, ...]:
        """The transmitters wired to one bus."""
        return tuple(t for t in self.transmitters if t.bus_id == bus_id)

    def bins_on(self, device_id: str) -> tuple[SimBin, ...]:
        """The bins weighed by one transmitter or BLE sensor."""
        return tuple(b for b in self.bins if b.device_id == device_id)


def _no_duplicates(what: str, values: list[Any]) -> None:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate {what} {v!r}")
        seen.add(v)


def demo_initial_count(safety_stock: int, max_stock: int, index: int) -> int:
    """A starting count for the demo: every 11th bin sits just above safety stock, the rest near full.

    The demo must show a low-stock condition within ~30 s; bins that start one item above their threshold make
    that happen naturally, and `StoreScenario(first_low_at_s=…)` guarantees it.
    """
    if index % 11 == 0:
        return min(safety_stock + 1, max_stock)
    return max(safety_stock + 1, max_stock - index % 3)


def sgtin_tags(
    gtin: str, serials: range | tuple[int, ...], *, company_prefix_digits: int = 7
) -> tuple[str, ...]:
    """SGTIN-96 EPCs (filter 1, point-of-sale item) of one GTIN-14, one per serial, for a simulated field.

    GS1 TDS §7.3.2: the item reference is the GTIN's indicator digit followed by the digits between the company
    prefix and the check digit. Encoded by the gateway's own codec (`drivers.rfid.epc`).
    """
    if len(gtin) != 14 or not gtin.isdigit():
        raise ValueError(f"{gtin!r} is not a GTIN-14")
    company = gtin[1 : 1 + company_prefix_digits]
    item_reference = gtin[0] + gtin[1 + company_prefix_digits : 13]
    return tuple(encode_sgtin96(1, company, item_reference, serial) for serial in serials)


# --- JSON ---------------------------------------------------------------------------------------------------


def _map_to_dict(rmap: RegisterMap) -> dict[str, Any]:
    w, s = rmap.weight, rmap.status
    return {
        "name": rmap.name,
        "description": rmap.description,
        "channels": rmap.channels,
        "weight": {
            "address": w.address,
            "type": str(w.value_type),
            "word_order": str(w.word_order),
            "stride": w.stride,
            "scale": w.scale,
        },
        "status": None
        if s is None
        else {
            "address": s.address,
            "stride": s.stride,
            "stable_bit": s.stable_bit,
            "overload_bit": s.overload_bit,
            "fault_bit": s.fault_bit,
        },
    }


def _map_from_dict(d: dict[str, Any]) -> RegisterMap:
    w, s = d["weight"], d.get("status")
    return RegisterMap(
        name=str(d["name"]),
        description=str(d.get("description", "")),
        channels=int(d["channels"]),
        weight=WeightPoint(
            address=int(w["address"]),
            value_type=ValueType(w.get("type", "int32")),
            word_order=WordOrder(w.get("word_order", "ABCD")),
            stride=int(w.get("stride", 2)),
            scale=float(w.get("scale", 1.0)),
        ),
        status=None
        if s is None
        else StatusPoint(
            address=int(s["address"]),
            stride=int(s.get("stride", 1)),
            stable_bit=s.get("stable_bit"),
            overload_bit=s.get("overload_bit"),
            fault_bit=s.get("fault_bit"),
        ),
    )


def layout_to_json(layout: SimLayout) -> str:
    """Serialise a layout (register maps inlined) so `shelfgate sim --layout FILE.json` can serve it."""
    p = layout.physics
    doc = {
        "format": LAYOUT_FORMAT,
        "noise_g": layout.noise_g,
        "seed": layout.seed,
        "physics": {
            "creep_g_per_h": p.creep_g_per_h,
            "settle_s": p.settle_s,
            "overshoot": p.overshoot,
            "sample_rate_hz": p.sample_rate_hz,
            "stable_window_s": p.stable_window_s,
            "stable_band_g": p.stable_band_g,
        },
        "buses": [
            {"bus_id": b.bus_id, "kind": b.kind, "port": b.port, "baudrate": b.baudrate} for b in layout.buses
        ],
        "transmitters": [
            {
                "device_id": t.device_id,
                "bus_id": t.bus_id,
                "unit_id": t.unit_id,
                "register_map": _map_to_dict(t.register_map),
            }
            for t in layout.transmitters
        ],
        "bins": [
            {
                "bin_id": b.bin_id,
                "device_id": b.device_id,
                "channel": b.channel,
                "unit_weight_g": b.unit_weight_g,
                "unit_weight_spread_g": b.unit_weight_spread_g,
                "tare_g": b.tare_g,
                "zero": b.zero,
                "span_g_per_unit": b.span_g_per_unit,
                "safety_stock": b.safety_stock,
                "max_stock": b.max_stock,
                "initial_count": b.initial_count,
                "capacity_g": b.capacity_g,
            }
            for b in layout.bins
        ],
        "scales": [dataclasses.asdict(d) for d in layout.scales],
        "scanners": [dataclasses.asdict(d) for d in layout.scanners],
        "rfid_readers": [{**dataclasses.asdict(d), "tags": list(d.tags)} for d in layout.rfid_readers],
        "ble_sensors": [dataclasses.asdict(d) for d in layout.ble_sensors],
        "codes": [dataclasses.asdict(c) for c in layout.codes],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def layout_from_json(text: str) -> SimLayout:
    """Parse a document written by `layout_to_json`; raise ValueError naming what is wrong."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("invalid layout document: it must be a JSON object")  # noqa: TRY004 - bad input value
    if doc.get("format", LAYOUT_FORMAT) != LAYOUT_FORMAT:
        raise ValueError(f"unsupported layout format {doc.get('format')!r} (expected {LAYOUT_FORMAT})")
    try:
        phys = doc.get("physics") or {}
        return SimLayout(
            buses=tuple(
                SimBus(
                    bus_id=str(b["bus_id"]),
                    kind=_bus_kind(b["kind"]),
                    port=None if b.get("port") is None else int(b["port"]),
                    baudrate=int(b.get("baudrate", 19200)),
                )
                for b in doc["buses"]
            ),
            transmitters=tuple(
                SimTransmitter(
                    device_id=str(t["device_id"]),
                    bus_id=str(t["bus_id"]),
                    unit_id=int(t["unit_id"]),
                    register_map=_map_from_dict(t["register_map"]),
                )
                for t in doc["transmitters"]
            ),
            bins=tuple(
                SimBin(
                    bin_id=str(b["bin_id"]),
                    device_id=str(b["device_id"]),
                    channel=int(b["channel"]),
                    unit_weight_g=float(b["unit_weight_g"]),
                    unit_weight_spread_g=float(b.get("unit_weight_spread_g", 0.0)),
                    tare_g=float(b.get("tare_g", 0.0)),
                    zero=float(b.get("zero", 0.0)),
                    span_g_per_unit=float(b.get("span_g_per_unit", 1.0)),
                    safety_stock=int(b["safety_stock"]),
                    max_stock=int(b["max_stock"]),
                    initial_count=int(b["initial_count"]),
                    capacity_g=None if b.get("capacity_g") is None else float(b["capacity_g"]),
                )
                for b in doc["bins"]
            ),
            noise_g=float(doc.get("noise_g", 1.0)),
            seed=int(doc.get("seed", 0)),
            physics=ShelfPhysics(**{k: v for k, v in phys.items() if v is not None}),
            scales=tuple(
                SimScale(
                    device_id=str(d["device_id"]),
                    protocol=_one_of(d.get("protocol", "mtsics"), ("mtsics", "nci")),
                    serial_number=str(d.get("serial_number", "0123456789")),
                    lane=None if d.get("lane") is None else str(d["lane"]),
                )
                for d in doc.get("scales", ())
            ),
            scanners=tuple(
                SimScanner(
                    device_id=str(d["device_id"]),
                    role=_one_of(d.get("role", "lane"), ("lane", "handheld", "receiving")),
                    lane=None if d.get("lane") is None else str(d["lane"]),
                )
                for d in doc.get("scanners", ())
            ),
            rfid_readers=tuple(
                SimRfidReader(
                    device_id=str(d["device_id"]),
                    zone=str(d["zone"]),
                    zone_kind=_one_of(d.get("zone_kind", "shelf"), ("shelf", "exit")),
                    tags=tuple(str(t) for t in d.get("tags", ())),
                )
                for d in doc.get("rfid_readers", ())
            ),
            ble_sensors=tuple(
                SimBleSensor(
                    device_id=str(d["device_id"]),
                    mac=str(d["mac"]),
                    keyed=bool(d.get("keyed", False)),
                    channels=int(d.get("channels", 1)),
                )
                for d in doc.get("ble_sensors", ())
            ),
            codes=tuple(
                SimCode(
                    data=str(c["data"]),
                    symbology=None if c.get("symbology") is None else str(c["symbology"]),
                    member=bool(c.get("member", False)),
                )
                for c in doc.get("codes", ())
            ),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"invalid layout document: {exc!r}") from exc


def _bus_kind(value: object) -> Literal["rtu", "tcp"]:
    if value == "rtu":
        return "rtu"
    if value == "tcp":
        return "tcp"
    raise ValueError(f"bus kind must be 'rtu' or 'tcp', not {value!r}")


_T = TypeVar("_T", bound=str)


def _one_of(value: object, allowed: tuple[_T, ...]) -> _T:
    for choice in allowed:
        if value == choice:
            return choice
    raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
