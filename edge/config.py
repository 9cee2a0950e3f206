"""Store configuration: one YAML file validated once, at start, into frozen typed models.

Every error names its key path and the line in the file (STYLE.md rule 11). Duplicates (bin ids, device ids
across every family, serial ports, unit ids on one bus, channels, BLE MACs) and contradictions
(`safety_stock` ≥ `max_stock`, a channel beyond the profile, a bin on a device that cannot weigh it, a lane
scale without its lane scanner) are errors, never warnings. Register profiles are data files
(`profiles/NAME.yaml` next to the store config, then the project's `config/profiles/`), turned into the
driver's frozen `RegisterMap`.

Device families and where their sections live:

=============  ==================  ============================================================================
family         section             feeds
=============  ==================  ============================================================================
modbus         `transmitters`      bins (`device` + `channel`), through the inventory engine
ble            `ble_sensors`       bins (`device` + `channel` = the sensor's mass object), the same engine path
scale          `scales`            the last stable weight per scale (checkout lanes, counters)
scanner        `scanners`          classified scans (product / GS1 / member)
rfid           `rfid_readers`      tag presence per antenna zone (`shelf` or `exit`)
camera         `cameras`           facing states per ROI (`ok`/`low`/`empty`/`unknown`): alerts on camera-only
                                   bins (a bin without `device`), hints on weighed bins' ambiguous changes
=============  ==================  ============================================================================

Secrets never live here: BTHome bind keys are read from `ble.keys_file` (mode 0600), the broker password
from `broker.password_file`. This module imports no driver that pulls in a radio or serial stack (bleak,
biip, pyserial): `shelfgate check-config` and a Modbus-only gateway stay light.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.modbus.protocol import RegisterMap, StatusPoint, ValueType, WeightPoint, WordOrder
from edge.outbox_quota import QUOTA_CRITICAL_MB, QUOTA_LEVELS_MB
from edge.retail.catalogue import Catalogue, load_catalogue, missing_skus
from edge.retail.errors import CatalogueError
from edge.retail.hours import OpeningHours, Shifts
from edge.yamlfile import Loc, YamlFileError, format_loc, nearest_line, parse_yaml, read_text

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
    """One SKU at one place on the shelf, weighed by one transmitter channel — or, without `device`, watched
    only by a camera (a *camera-only* bin: fresh produce, hanging goods; a camera ROI must name it in `bin`).
    """

    id: Identifier
    sku: str = Field(min_length=1, max_length=32, description="GTIN-14 or store SKU")
    name: LocalizedName
    unit_weight_g: float = Field(
        default=0.0, ge=0, description="one item's mass; required (> 0) for a weighed bin (one with `device`)"
    )
    unit_weight_spread_g: float = Field(
        default=0.0, ge=0, description="standard deviation of one item's mass"
    )
    tare_g: float = Field(default=0.0, ge=0, description="container/tray mass on the plate, not counted")
    calibration: Calibration = Calibration()
    safety_stock: int = Field(ge=0, description="a count below this raises a `low` alert")
    max_stock: int = Field(gt=0, description="a count above this raises an `over` alert")
    device: Identifier | None = Field(
        default=None,
        description="id of the weight transmitter or BLE shelf sensor (`ble_sensors[].id`) weighing this bin; "
        "absent: a camera-only bin",
    )
    channel: int = Field(
        default=0,
        ge=0,
        description="the transmitter channel (0-based); for a BLE sensor the mass object in its advert "
        "(0 for a single-cell sensor); required with `device`",
    )
    location: str = Field(default="", description="where staff find it, e.g. `aisle A, shelf 2`")

    @property
    def weighed(self) -> bool:
        """True when a weighing device carries the bin (False: camera-only)."""
        return self.device is not None

    @model_validator(mode="after")
    def _weighed_bin_fields(self) -> Bin:
        # `device` became optional for camera-only bins (issue #8); a weighed bin still needs what it did.
        if self.device is None:
            return self
        missing = [f for f in ("unit_weight_g", "channel") if f not in self.model_fields_set]
        if missing:
            raise ValueError(f"a bin with `device` needs {' and '.join(f'`{f}`' for f in missing)}")
        if self.unit_weight_g <= 0:
            raise ValueError("unit_weight_g must be greater than 0 for a weighed bin")
        return self


# --- the other device families -----------------------------------------------------------------------------

Parity = Literal["N", "E", "O"]
SERIAL_PORT_DOC = "serial device path; prefer a stable `/dev/serial/by-id/…` link for USB devices"


class Scale(_Frozen):
    """A checkout or counter scale on a serial port; the gateway keeps its last stable weight.

    Only weights the scale itself declares stable are used (DOMAIN.md); `poll_interval_s` is the pause between
    two stable-weight reads, `stable_timeout_s` how long one read may wait for the pan to settle.
    """

    id: Identifier
    port: str = Field(min_length=1, description=SERIAL_PORT_DOC)
    protocol: Literal["mtsics", "nci"] = Field(
        default="mtsics", description="`mtsics` (Mettler Toledo MT-SICS) or `nci` (NCI/ECR)"
    )
    baudrate: int = Field(default=9600, gt=0, description="MT-SICS factory setting: 9600 8N1")
    bytesize: Literal[7, 8] = 8
    parity: Parity = "N"
    stopbits: Literal[1, 2] = 1
    lane: Identifier | None = Field(default=None, description="the checkout lane it belongs to, if any")
    poll_interval_s: float = Field(default=0.5, gt=0, le=60, description="pause between stable-weight reads")
    request_timeout_s: float = Field(default=1.0, gt=0, le=30)
    stable_timeout_s: float = Field(default=5.0, gt=0, le=60)


class Scanner(_Frozen):
    """A barcode scanner in serial/USB-CDC mode (AIM prefix on, CR suffix)."""

    id: Identifier
    port: str = Field(min_length=1, description=SERIAL_PORT_DOC)
    baudrate: int = Field(default=9600, gt=0, description="ignored by USB-CDC scanners")
    role: Literal["lane", "handheld", "receiving"] = Field(
        description="`lane` (a checkout lane's scanner), `handheld` (stocktake) or `receiving` (goods in)"
    )
    lane: Identifier | None = Field(default=None, description="required for, and only for, `role: lane`")
    member_patterns: list[str] | None = Field(
        default=None,
        description="regexes a member card/QR payload matches (a `member_id` group names the member); "
        "none: `barcodes.member_patterns`",
    )


class Barcodes(_Frozen):
    """How this store's barcodes read: member codes and in-store variable-measure codes."""

    member_patterns: list[str] | None = Field(
        default=None,
        description="regexes of member card/QR payloads for every scanner; none: the driver's defaults "
        "(`MBR` + 10 digits, `shelfgate://member/ID`)",
    )
    rcn_region: str | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="ISO country code whose GS1 office defines in-store (prefix 2x) weight/price codes",
    )


class RfidAntenna(_Frozen):
    """One antenna port of a reader and the zone its field covers."""

    antenna: int = Field(default=1, ge=1, le=32, description="antenna port number (1-based)")
    zone: Identifier = Field(description="zone id; several antennas (of any reader) may cover one zone")
    kind: Literal["shelf", "exit"] = Field(
        default="shelf", description="`shelf` (stock on display) or `exit` (a tag seen here is leaving)"
    )


class RfidReader(_Frozen):
    """A UHF RFID reader: a serial module (`m100`: M100 / JRD-4035 family, frames `BB … 7E`) or a fixed
    reader over LLRP (`llrp`: host + TCP port; needs the optional `llrp` extra, sllurp, GPLv3)."""

    id: Identifier
    protocol: Literal["m100", "llrp"] = Field(
        default="m100", description="`m100`: serial UHF module; `llrp`: fixed reader over LLRP (TCP)"
    )
    port: str | None = Field(default=None, min_length=1, description="m100: " + SERIAL_PORT_DOC)
    baudrate: int = Field(default=115200, gt=0, description="m100: the module's factory setting")
    host: str | None = Field(default=None, min_length=1, description="llrp: the reader's address")
    llrp_port: int = Field(
        default=5084, gt=0, lt=65536, description="llrp: TCP port (5084 is the IANA-registered LLRP port)"
    )
    silence_s: float = Field(
        default=2.0, gt=0, le=60, description="silence before the reader is probed (stop + restart inventory)"
    )
    antennas: list[RfidAntenna] = Field(
        min_length=1,
        description="antenna → zone; an M100 has antenna 1 only, an LLRP reader any of its ports",
    )

    @model_validator(mode="after")
    def _transport(self) -> RfidReader:
        if self.protocol == "m100" and (self.port is None or self.host is not None):
            raise ValueError("an m100 reader needs `port` (a serial device) and no `host`")
        if self.protocol == "llrp" and (self.host is None or self.port is not None):
            raise ValueError("an llrp reader needs `host` (and optionally `llrp_port`), not a serial `port`")
        return self


class RfidPresence(_Frozen):
    """Tag presence windows (drivers/rfid/presence.py), shared by every zone so a tag can move between them."""

    min_reads: int = Field(default=3, ge=1, description="reads within `enter_window_s` to enter a zone")
    enter_window_s: float = Field(default=3.0, gt=0)
    min_window_s: float = Field(default=1.0, gt=0, description="floor of the adaptive hold window")
    max_window_s: float = Field(default=10.0, gt=0, description="ceiling: a departed tag is gone after this")
    false_leave_probability: float = Field(
        default=1e-9, gt=0, lt=1, description="accepted chance of a false leave per silent stretch"
    )

    @model_validator(mode="after")
    def _window_order(self) -> RfidPresence:
        if self.min_window_s > self.max_window_s:
            raise ValueError(
                f"min_window_s ({self.min_window_s}) must not exceed max_window_s ({self.max_window_s})"
            )
        return self


CANONICAL_MAC = r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$"


class BleSensor(_Frozen):
    """A BTHome v2 shelf sensor heard by passive BLE scanning (no connection).

    Bins bind to it like to a transmitter: `device: <id>`, `channel: <mass object index>`. The engine gets the
    sensor's mass in grams, so a bin's `calibration` is `zero` = the empty-plate reading in grams and
    `span_g_per_unit` = 1 (the defaults).
    """

    id: Identifier
    mac: str = Field(
        pattern=CANONICAL_MAC, description="Bluetooth address, upper case with colons: `A4:C1:38:00:00:01`"
    )
    keyed: bool = Field(
        default=False,
        description="AES-CCM encrypted adverts; the key is read from `ble.keys_file`, plaintext is refused",
    )
    channels: int = Field(default=1, ge=1, le=8, description="mass objects per advert (load cells)")
    settle_window_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="stability window of its bins' estimators; at least 3 advert intervals",
    )
    location: str = Field(default="", description="where it is mounted")


class Ble(_Frozen):
    """The Bluetooth adapter and the secrets file of the BLE shelf sensors."""

    keys_file: Path | None = Field(
        default=None,
        description="YAML/JSON secrets file MAC → 32-hex-digit bind key, mode 0600 (relative to this file)",
    )
    adapter: str | None = Field(default=None, description="BlueZ adapter, e.g. `hci0`; none: the default")
    passive: bool = Field(default=True, description="passive scanning (no scan requests: spares coin cells)")
    silent_after_s: float = Field(
        default=60.0, gt=0, le=3600, description="no valid advert for this long: the sensor is offline"
    )


CAMERA_SOURCE_PREFIXES: Final = ("/dev/", "rtsp://", "rtsps://", "http://", "https://", "file:", "synthetic:")
"""Accepted `cameras[].source` forms (drivers/camera: `OpenCvSource`, `VideoFileSource`; `synthetic:` only
runs when the demo or a test injects the source — `shelfgate run` refuses it at start)."""


class CameraRoi(_Frozen):
    """One facing in a camera's view: a rectangle or a polygon in reference-image pixels, bound to a SKU.

    Draw it around the *stocked* products (not the bare shelf above them). With `bin` the facing belongs to
    that bin: a camera-only bin gets `low`/`out` alerts from it, a weighed bin gets it as a hint when its
    weight change is ambiguous.
    """

    id: Identifier
    rect: tuple[int, int, int, int] | None = Field(
        default=None, description="`[x, y, width, height]`, top-left origin, pixels"
    )
    polygon: list[tuple[int, int]] | None = Field(
        default=None, description="`[[x, y], …]`, at least 3 points (instead of `rect`)"
    )
    sku: str | None = Field(
        default=None, min_length=1, max_length=32, description="the facing's SKU; default: its bin's `sku`"
    )
    bin: Identifier | None = Field(default=None, description="the bin (`bins[].id`) this facing shows")
    # Camera fusion for a weighed bin (docs/cameras.md, "Fusion with weight"); ignored for camera-only bins.
    units: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="units the stocked facing shows (as in its reference): the fill score then counts items "
        "to settle an ambiguous weight change; without it only `empty` (0 items) and 'not empty' do",
    )
    fusion_frames: int = Field(
        default=3,
        ge=1,
        le=30,
        description="agreeing, unblocked frames after a weight change the camera needs",
    )
    fusion_window_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="how long after an ambiguous weight change the camera may answer",
    )
    fill_tolerance_items: float = Field(
        default=0.35, gt=0, le=1, description="fill score × `units` must be this close to the count it picks"
    )
    misplaced_min_fraction: float = Field(
        default=0.25,
        gt=0,
        le=0.5,
        description="a weight change this far (in units) from every whole number of items is foreign goods",
    )
    misplaced_max_score_change: float = Field(
        default=0.1, ge=0, le=1, description="fill score change up to which the facing counts as unchanged"
    )

    @model_validator(mode="after")
    def _shape(self) -> CameraRoi:
        if (self.rect is None) == (self.polygon is None):
            raise ValueError("give exactly one of `rect` or `polygon`")
        if self.rect is not None:
            x, y, w, h = self.rect
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"rect {list(self.rect)}: x, y must be ≥ 0 and width, height > 0")
        if self.polygon is not None:
            if len(self.polygon) < 3:
                raise ValueError(f"a polygon needs at least 3 points, got {len(self.polygon)}")
            if any(x < 0 or y < 0 for x, y in self.polygon):
                raise ValueError("polygon points must not be negative")
            if _polygon_area2(self.polygon) == 0:
                raise ValueError("the polygon has no area")
        if self.sku is None and self.bin is None:
            raise ValueError("give `sku`, `bin` or both (a facing is bound to a SKU)")
        return self

    @property
    def points(self) -> tuple[tuple[int, int], ...]:
        """The outline as points (a rect's four corners)."""
        if self.rect is not None:
            x, y, w, h = self.rect
            return ((x, y), (x + w, y), (x + w, y + h), (x, y + h))
        return tuple(self.polygon or ())


def _polygon_area2(points: Sequence[tuple[int, int]]) -> int:
    """Twice the signed area (shoelace formula)."""
    n = len(points)
    return sum(
        points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1] for i in range(n)
    )


class FrameSize(_Frozen):
    """The camera's image size; ROIs are checked to lie inside it."""

    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)


class CameraReference(_Frozen):
    """When the reference (the stocked view every facing is compared with) is captured.

    It lives in memory only (privacy: nothing is written to disk), so it must be captured again after every
    start: `on_start` takes the first `frames` frames (per-pixel median: a passer-by does not end up in it) —
    start the gateway with the shelf stocked; `manual` waits for the installer.
    """

    capture: Literal["on_start", "manual"] = Field(
        default="on_start", description="`on_start` (first frames after start) or `manual` (installer)"
    )
    frames: int = Field(default=3, ge=1, le=30, description="frames combined by per-pixel median")
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="give up waiting for frames after this")


class Camera(_Frozen):
    """A shelf camera (V4L2/USB, RTSP, an MJPEG URL or a video file) and its facings."""

    id: Identifier
    source: str = Field(
        min_length=1,
        description="`/dev/videoN` (or `/dev/v4l/by-id/…`), `rtsp://…`, `http(s)://…` (MJPEG), `file:PATH`; "
        "`synthetic:NAME` only with the demo's simulator",
    )
    analysis_fps: float = Field(
        default=1.0, gt=0, le=30, description="frames analysed per second (a shelf does not change faster)"
    )
    frame_size: FrameSize | None = Field(default=None, description="if given, every ROI must fit inside it")
    rois: list[CameraRoi] = Field(min_length=1, description="one per facing")
    reference: CameraReference = CameraReference()
    location: str = Field(default="", description="where it is mounted")

    @model_validator(mode="after")
    def _source_form(self) -> Camera:
        if not self.source.startswith(CAMERA_SOURCE_PREFIXES):
            raise ValueError(
                f"source {self.source!r}: expected one of {', '.join(p + '…' for p in CAMERA_SOURCE_PREFIXES)}"
            )
        return self


class Broker(_Frozen):
    """The MQTT broker the uplink publishes to."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, gt=0, lt=65536)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_file: Path | None = Field(default=None, description="secrets live in files, not in this config")
    ca_file: Path | None = Field(default=None, description="CA certificate: TLS on (docs/security.md)")
    cert_file: Path | None = Field(
        default=None, description="this gateway's client certificate (`shelfgate pki`)"
    )
    key_file: Path | None = Field(default=None, description="its private key (mode 0600)")


class Api(_Frozen):
    """The local REST API and staff pages."""

    host: str = Field(
        default="127.0.0.1",
        description="listen address; anything but loopback needs `api.users_file` (docs/security.md)",
    )
    port: int = Field(default=8080, ge=0, lt=65536, description="0 picks a free port")
    users_file: Path | None = Field(
        default=None,
        description="users and argon2id password hashes (mode 0600, relative to this file; `shelfgate users add`);"
        " when set, every route but `/api/health` needs a login. Unset: open API, loopback only",
    )
    session_ttl_s: float = Field(
        default=43_200.0, gt=0, le=7 * 86_400, description="a login lasts this long (default one 12 h shift)"
    )
    login_max_attempts_per_min: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="login attempts per client address and user name per minute (429)",
    )


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
    resend_retention_events: int = Field(
        default=200_000,
        ge=0,
        description="sent events kept so the hub's `cmd/resend` can be served (newest N)",
    )
    resend_retention_days: float = Field(
        default=7.0, ge=0, description="…and none older than this many days; unsent events are never pruned"
    )
    outbox_quota_critical_mb: float = Field(
        default=QUOTA_CRITICAL_MB,
        gt=0,
        description="disk quota of unsent sales and alerts (MiB): never dropped; at the quota one alarm is raised"
        " and level updates are held (docs/reliability.md#outbox-quotas)",
    )
    outbox_quota_levels_mb: float = Field(
        default=QUOTA_LEVELS_MB,
        gt=0,
        description="disk quota of unsent stock/facing level updates (MiB): at the quota one alarm is raised and"
        " they coalesce to the latest per bin",
    )


class Forecast(_Frozen):
    """Stock-out forecast (`predicted_out`, docs/store-workflows.md#stock-out-forecast-缺货预警)."""

    enabled: bool = True
    horizon_min: float = Field(default=30.0, gt=0, description="alert when a bin would be empty within this")
    tau_min: float = Field(default=30.0, gt=0, description="time constant of the pick-rate average")
    clear_factor: float = Field(default=1.5, ge=1, description="resolve when the ETA exceeds horizon × this")
    min_picks: float = Field(
        default=3.0, ge=0, description="recent pick events needed before a rate is trusted"
    )
    tick_s: float = Field(
        default=60.0, gt=0, le=3600, description="re-evaluation period without count changes"
    )


class LossRules(_Frozen):
    """RFID exit-zone loss signal (`loss_suspected`, docs/store-workflows.md#rfid-loss-signal)."""

    enabled: bool = True
    sold_window_min: float = Field(
        default=15.0,
        gt=0,
        description="an exit is covered by a sale of its GTIN within this many minutes before",
    )
    expire_h: float = Field(
        default=8.0, gt=0, description="an unanswered loss alert resolves itself after this (kept in history)"
    )


class ShrinkRules(_Frozen):
    """Shrink signal per SKU (`shrink_suspected`, docs/store-workflows.md#shrink-signal)."""

    enabled: bool = True
    window_min: float = Field(
        default=240.0, gt=0, description="picks and sales are compared over this window"
    )
    grace_min: float = Field(
        default=10.0, ge=0, description="picks this recent wait for their sale (the walk to the checkout)"
    )
    put_back_min: float = Field(
        default=10.0,
        ge=0,
        description="a put within this of a pick is a put-back (offsets it), later a restock",
    )
    tolerance_units: int = Field(default=3, ge=0, description="unexplained picks tolerated (units)…")
    tolerance_pct: float = Field(default=10.0, ge=0, le=100, description="…or this % of the picks, if more")
    tick_s: float = Field(default=60.0, gt=0, le=3600, description="how often the window is evaluated")


class StoreConfig(_Frozen):
    """A whole store: the file `shelfgate run --config FILE` reads."""

    store_id: Identifier = Field(description="the store's id on the wire and at the hub (topic root)")
    gateway_id: Identifier | None = Field(default=None, description="defaults to `{store_id}-gw`")
    data_dir: Path = Field(default=Path("var"), description="SQLite database folder (relative to this file)")
    buses: list[Bus] = Field(default=[], description="RS-485 lines and Modbus TCP endpoints")
    transmitters: list[Transmitter] = Field(default=[], description="weight transmitters on the buses")
    scales: list[Scale] = Field(default=[], description="checkout and counter scales")
    scanners: list[Scanner] = Field(default=[], description="barcode scanners (lane, handheld, receiving)")
    rfid_readers: list[RfidReader] = Field(default=[], description="UHF RFID readers and their antenna zones")
    ble_sensors: list[BleSensor] = Field(default=[], description="BTHome BLE shelf sensors")
    cameras: list[Camera] = Field(default=[], description="shelf cameras and their facings (ROIs)")
    bins: list[Bin] = Field(
        default=[], description="one SKU at one place, on one transmitter channel or BLE sensor"
    )
    broker: Broker = Broker()
    api: Api = Api()
    alerts: Alerts = Alerts()
    bridge: Bridge = Bridge()
    barcodes: Barcodes = Barcodes()
    rfid_presence: RfidPresence = RfidPresence()
    ble: Ble = Ble()
    catalogue: Path | None = Field(
        default=None,
        description="product catalogue (`.yaml`/`.yml` or an HQ `.csv` export; relative to this file); when "
        "set, every bin's `sku` must exist in it (docs/store-workflows.md#catalogue)",
    )
    shifts: Shifts | None = Field(
        default=None,
        description="staff shifts for the response-time report, e.g. `{tz: Asia/Shanghai, shifts: [{name: early, "
        'hours: "07:00-15:00"}, {name: late, hours: "15:00-23:00"}]}` (local time, no overlaps; '
        "docs/store-workflows.md#staff-response-times)",
    )
    opening_hours: OpeningHours = Field(
        default=OpeningHours(),
        description='when the store is open (forecast alerts only then), e.g. `{tz: Asia/Shanghai, default: "08:00-'
        '22:00", sun: "09:00-21:00"}`',
    )
    forecast: Forecast = Field(default=Forecast(), description="stock-out forecast: `predicted_out` alerts")
    loss: LossRules = Field(
        default=LossRules(), description="RFID exit-zone loss signal: `loss_suspected` alerts"
    )
    shrink: ShrinkRules = Field(
        default=ShrinkRules(), description="picks not explained by sales: `shrink_suspected` alerts"
    )

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
    catalogue: Catalogue | None = None
    """The product catalogue named by `catalogue:`, validated, with every bin's SKU in it."""

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


# --- YAML with line numbers (edge/yamlfile.py) -------------------------------------------------------------


def _read_yaml(path: Path) -> tuple[Any, Mapping[Loc, int]]:
    try:
        return parse_yaml(read_text(path))
    except YamlFileError as exc:
        raise ConfigError(path, [ConfigIssue("", exc.line, exc.message)]) from exc


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
        out.append(ConfigIssue(format_loc(loc), nearest_line(loc, lines), msg))
    return out


FAMILY_SECTIONS: Mapping[str, str] = {
    "transmitters": "modbus",
    "scales": "scale",
    "scanners": "scanner",
    "rfid_readers": "rfid",
    "ble_sensors": "ble",
    "cameras": "camera",
}
"""Config section → device family (the `family` field of `/api/devices` and of the heartbeat)."""

WEIGHING_SECTIONS: Final = ("transmitters", "ble_sensors")
"""Families whose readings feed a bin's estimator."""


def _cross_checks(
    store: StoreConfig, config_dir: Path, lines: Mapping[Loc, int]
) -> tuple[list[ConfigIssue], dict[str, RegisterMap]]:
    issues: list[ConfigIssue] = []

    def issue(loc: Loc, msg: str) -> None:
        issues.append(ConfigIssue(format_loc(loc), nearest_line(loc, lines), msg))

    def dupes(items: Sequence[Any], key: str, attr: str, what: str) -> None:
        first: dict[Any, int] = {}
        for i, item in enumerate(items):
            value = getattr(item, attr)
            if value in first:
                issue((key, i, attr), f"duplicate {what} {value!r} (first at {key}[{first[value]}])")
            else:
                first[value] = i

    if not any(getattr(store, section) for section in FAMILY_SECTIONS):
        issue((), f"no devices: configure at least one of {', '.join(FAMILY_SECTIONS)}")
    dupes(store.buses, "buses", "id", "bus id")
    dupes(store.bins, "bins", "id", "bin id")
    dupes(store.ble_sensors, "ble_sensors", "mac", "BLE MAC")
    _device_ids_and_ports(store, issue)
    profiles = _check_transmitters(store, config_dir, issue)
    _check_bins(store, profiles, issue)
    _check_lanes(store, issue)
    _check_patterns(store, issue)
    _check_rfid(store, issue)
    _check_cameras(store, issue)
    _check_api(store, config_dir, issue)
    if store.ble.keys_file is None:
        for i, sensor in enumerate(store.ble_sensors):
            if sensor.keyed:
                issue(
                    ("ble_sensors", i, "keyed"),
                    "a keyed sensor needs `ble.keys_file` (its key lives in that secrets file, never here)",
                )
    return issues, profiles


Issue = Callable[[Loc, str], None]


def is_loopback_host(host: str) -> bool:
    """`127.0.0.0/8`, `::1` or `localhost`: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_api(store: StoreConfig, config_dir: Path, issue: Issue) -> None:
    """A LAN-facing API must have users (edge/auth.py); a named users file must exist."""
    users_file = store.api.users_file
    if users_file is None:
        if not is_loopback_host(store.api.host):
            issue(
                ("api", "host"),
                f"{store.api.host!r} is not a loopback address: a LAN-facing API needs users — run `shelfgate"
                " users add NAME --role admin --file users.json` and set `api.users_file`",
            )
        return
    path = users_file if users_file.is_absolute() else config_dir / users_file
    if not path.is_file():
        issue(
            ("api", "users_file"),
            f"{path} does not exist: create it with `shelfgate users add NAME --role admin --file {path}`",
        )


def _device_ids_and_ports(store: StoreConfig, issue: Issue) -> None:
    """Device ids are unique across every family; a serial port belongs to one device (or one RTU bus)."""
    ids: dict[str, str] = {}
    ports: dict[str, str] = {}
    for bus_index, bus in enumerate(store.buses):
        if isinstance(bus, RtuBus):
            ports.setdefault(bus.port, f"buses[{bus_index}]")
    for section in FAMILY_SECTIONS:
        for i, device in enumerate(getattr(store, section)):
            here = f"{section}[{i}]"
            if device.id in ids:
                issue((section, i, "id"), f"duplicate device id {device.id!r} (first at {ids[device.id]})")
            else:
                ids[device.id] = here
            port = getattr(device, "port", None)
            if port is None:
                continue
            if port in ports:
                issue((section, i, "port"), f"port {port} already used by {ports[port]}")
            else:
                ports[port] = here


def _check_transmitters(store: StoreConfig, config_dir: Path, issue: Issue) -> dict[str, RegisterMap]:
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
    return profiles


def _check_bins(store: StoreConfig, profiles: Mapping[str, RegisterMap], issue: Issue) -> None:
    """Every bin sits on one free channel of a device that can weigh it."""
    transmitters = {t.id: t for t in store.transmitters}
    sensors = {s.id: s for s in store.ble_sensors}
    others = {
        d.id: FAMILY_SECTIONS[section]
        for section in FAMILY_SECTIONS
        if section not in WEIGHING_SECTIONS
        for d in getattr(store, section)
    }
    channels: dict[tuple[str, int], int] = {}
    for i, b in enumerate(store.bins):
        if b.safety_stock >= b.max_stock:
            issue(
                ("bins", i, "safety_stock"),
                f"safety_stock ({b.safety_stock}) must be below max_stock ({b.max_stock})",
            )
        if b.device is None:
            continue  # camera-only: `_check_cameras` makes sure a ROI watches it
        if b.device in transmitters:
            rmap = profiles.get(transmitters[b.device].profile)
            if rmap is not None and b.channel >= rmap.channels:
                issue(
                    ("bins", i, "channel"),
                    f"channel {b.channel} outside 0..{rmap.channels - 1} of profile {rmap.name!r}",
                )
        elif b.device in sensors:
            n = sensors[b.device].channels
            if b.channel >= n:
                issue(
                    ("bins", i, "channel"),
                    f"channel {b.channel} outside 0..{n - 1} of BLE sensor {b.device!r} (its `channels`)",
                )
        elif b.device in others:
            hint = " (a camera watches a bin through a ROI's `bin`)" if others[b.device] == "camera" else ""
            issue(
                ("bins", i, "device"),
                f"device {b.device!r} is a {others[b.device]}; a bin is weighed by a transmitter or a BLE "
                f"shelf sensor{hint}",
            )
            continue
        else:
            issue(("bins", i, "device"), f"unknown device {b.device!r}")
            continue
        key = (b.device, b.channel)
        if key in channels:
            issue(
                ("bins", i, "channel"),
                f"channel {b.channel} of {b.device!r} already used by bins[{channels[key]}]",
            )
        else:
            channels[key] = i


def _check_lanes(store: StoreConfig, issue: Issue) -> None:
    """A checkout lane is named by its lane scanner; its scale (if any) must have that scanner."""
    lane_scanner: dict[str, int] = {}
    for i, sc in enumerate(store.scanners):
        if sc.role == "lane" and sc.lane is None:
            issue(("scanners", i, "lane"), "a scanner with role: lane needs `lane` (the lane's id)")
        elif sc.role != "lane" and sc.lane is not None:
            issue(("scanners", i, "lane"), f"only a role: lane scanner belongs to a lane (this is {sc.role})")
        elif sc.lane is not None:
            if sc.lane in lane_scanner:
                issue(
                    ("scanners", i, "lane"),
                    f"lane {sc.lane!r} already has its scanner scanners[{lane_scanner[sc.lane]}]",
                )
            else:
                lane_scanner[sc.lane] = i
    lane_scale: dict[str, int] = {}
    for i, scale in enumerate(store.scales):
        if scale.lane is None:
            continue
        if scale.lane not in lane_scanner:
            issue(
                ("scales", i, "lane"),
                f"lane {scale.lane!r} has no scanner (add one with role: lane, lane: {scale.lane})",
            )
        if scale.lane in lane_scale:
            issue(("scales", i, "lane"), f"lane {scale.lane!r} already has scales[{lane_scale[scale.lane]}]")
        else:
            lane_scale[scale.lane] = i


def _check_patterns(store: StoreConfig, issue: Issue) -> None:
    owners: list[tuple[Loc, list[str] | None]] = [
        (("barcodes", "member_patterns"), store.barcodes.member_patterns)
    ]
    owners += [
        (("scanners", i, "member_patterns"), sc.member_patterns) for i, sc in enumerate(store.scanners)
    ]
    for loc, patterns in owners:
        for j, pattern in enumerate(patterns or ()):
            try:
                re.compile(pattern)
            except re.error as exc:
                issue((*loc, j), f"not a valid regular expression: {exc}")


def _check_rfid(store: StoreConfig, issue: Issue) -> None:
    zone_kind: dict[str, tuple[str, str]] = {}
    for i, reader in enumerate(store.rfid_readers):
        if reader.protocol == "llrp" and importlib.util.find_spec("sllurp") is None:
            issue(
                ("rfid_readers", i, "protocol"),
                "llrp readers need the optional LLRP support (GPLv3 sllurp): pip install 'shelfgate[llrp]'",
            )
        seen: set[int] = set()
        for j, ant in enumerate(reader.antennas):
            loc: Loc = ("rfid_readers", i, "antennas", j)
            if ant.antenna in seen:
                issue((*loc, "antenna"), f"antenna {ant.antenna} of {reader.id!r} is listed twice")
            seen.add(ant.antenna)
            if reader.protocol == "m100" and ant.antenna != 1:
                issue(
                    (*loc, "antenna"),
                    f"an M100 module has one antenna port (1); use one reader per antenna, not {ant.antenna}",
                )
            first = zone_kind.setdefault(ant.zone, (ant.kind, f"rfid_readers[{i}].antennas[{j}]"))
            if first[0] != ant.kind:
                issue(
                    (*loc, "kind"),
                    f"zone {ant.zone!r} is kind {first[0]!r} at {first[1]}, not {ant.kind!r}",
                )


def _check_cameras(store: StoreConfig, issue: Issue) -> None:
    """ROIs: unique per camera, bound to a bin that exists (same SKU), inside the frame; camera-only bins
    are watched by at least one ROI."""
    bins = {b.id: b for b in store.bins}
    watched: set[str] = set()
    for i, cam in enumerate(store.cameras):
        seen: dict[str, int] = {}
        for j, roi in enumerate(cam.rois):
            loc: Loc = ("cameras", i, "rois", j)
            if roi.id in seen:
                issue(
                    (*loc, "id"), f"duplicate ROI id {roi.id!r} (first at cameras[{i}].rois[{seen[roi.id]}])"
                )
            else:
                seen[roi.id] = j
            if roi.bin is not None:
                b = bins.get(roi.bin)
                if b is None:
                    issue((*loc, "bin"), f"unknown bin {roi.bin!r}")
                else:
                    watched.add(b.id)
                    if roi.sku is not None and roi.sku != b.sku:
                        issue((*loc, "sku"), f"sku {roi.sku!r} differs from bin {b.id!r}'s sku {b.sku!r}")
            if cam.frame_size is not None:
                xs = [p[0] for p in roi.points]
                ys = [p[1] for p in roi.points]
                w, h = cam.frame_size.width, cam.frame_size.height
                if max(xs) > w or max(ys) > h:
                    issue(
                        (*loc, "rect" if roi.rect is not None else "polygon"),
                        f"ROI {roi.id!r} reaches ({max(xs)}, {max(ys)}), outside the {w}×{h} frame",
                    )
    for i, b in enumerate(store.bins):
        if b.device is None and b.id not in watched:
            issue(
                ("bins", i, "id"),
                f"bin {b.id!r} has no `device` and no camera ROI names it: give it a `device` (weighed) or "
                "bind a `cameras[].rois[].bin` to it (camera-only)",
            )


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
    catalogue, catalogue_issues = _load_store_catalogue(store, file.parent, lines)
    issues += catalogue_issues
    if issues:
        raise ConfigError(file, issues)
    if not store.data_dir.is_absolute():
        store = store.model_copy(update={"data_dir": (file.parent / store.data_dir).resolve()})
    users_file = store.api.users_file
    if users_file is not None and not users_file.is_absolute():
        store = store.model_copy(
            update={"api": store.api.model_copy(update={"users_file": (file.parent / users_file).resolve()})}
        )
    keys_file = store.ble.keys_file
    if keys_file is not None and not keys_file.is_absolute():
        ble = store.ble.model_copy(update={"keys_file": (file.parent / keys_file).resolve()})
        store = store.model_copy(update={"ble": ble})
    # Certificates and the password file, like data_dir, are relative to this file (not to wherever the
    # service happens to start).
    secrets = {
        name: (file.parent / value).resolve()
        for name in ("password_file", "ca_file", "cert_file", "key_file")
        if (value := getattr(store.broker, name)) is not None and not value.is_absolute()
    }
    if secrets:
        store = store.model_copy(update={"broker": store.broker.model_copy(update=secrets)})
    if any(c.source.startswith("file:") and not Path(c.source[5:]).is_absolute() for c in store.cameras):
        cameras = [
            c.model_copy(update={"source": f"file:{(file.parent / c.source[5:]).resolve()}"})
            if c.source.startswith("file:") and not Path(c.source[5:]).is_absolute()
            else c
            for c in store.cameras
        ]
        store = store.model_copy(update={"cameras": cameras})
    # Calibrations and bindings decided on site live in an overlay in data_dir (edge/calibration.py says
    # why); they are part of what this gateway runs, so they are part of its config version too.
    from edge.calibration import merge_overlay  # noqa: PLC0415 - edge.calibration imports this module

    store, overlay = merge_overlay(store)
    version = hashlib.sha256(file.read_bytes() + overlay).hexdigest()[:12]
    if store.catalogue is not None and not store.catalogue.is_absolute():
        store = store.model_copy(update={"catalogue": (file.parent / store.catalogue).resolve()})
    return LoadedConfig(
        store=store, profiles=profiles, path=file.resolve(), version=version, catalogue=catalogue
    )


def _load_store_catalogue(
    store: StoreConfig, base: Path, lines: Mapping[Loc, int]
) -> tuple[Catalogue | None, list[ConfigIssue]]:
    """Load `catalogue:` and require every bin's SKU in it (issue #6 part 1, issue #7 part 3).

    A catalogue problem is reported at the `catalogue` key, each of the catalogue file's own issues quoted
    with its line there; a bin whose SKU is missing is reported at that bin's `sku` line.
    """
    if store.catalogue is None:
        return None, []
    file = store.catalogue if store.catalogue.is_absolute() else base / store.catalogue
    line = nearest_line(("catalogue",), lines)
    try:
        catalogue = load_catalogue(file)
    except CatalogueError as exc:
        return None, [ConfigIssue("catalogue", line, f"{file.name}: {issue}") for issue in exc.issues] or [
            ConfigIssue("catalogue", line, str(exc))
        ]
    except OSError as exc:
        return None, [ConfigIssue("catalogue", line, f"cannot read {file}: {exc.strerror or exc}")]
    missing = set(missing_skus(catalogue, [b.sku for b in store.bins]))
    issues = [
        ConfigIssue(
            f"bins[{i}].sku",
            nearest_line(("bins", i, "sku"), lines),
            f"SKU {b.sku!r} of bin {b.id!r} is not in the catalogue {file.name}",
        )
        for i, b in enumerate(store.bins)
        if b.sku in missing
    ]
    return catalogue, issues
