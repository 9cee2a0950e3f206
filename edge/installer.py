"""The installer's API and page: calibrate a bin, bind it to a product, pick-test it, see the commissioning record.

Mounted by `edge.api.create_app` (`app.include_router(installer_router(gateway))`). Routes::

    GET    /installer                                     the page (edge/web/installer.html)
    GET    /api/installer/calibration/{bin}               the wizard's status (404 when none runs)
    POST   /api/installer/calibration/{bin}               start (or restart) the wizard for a bin
    POST   /api/installer/calibration/{bin}/empty         the plate is empty → wait for a stable zero
    POST   /api/installer/calibration/{bin}/loaded        {mass_g} is on the plate → span, then check
    POST   /api/installer/calibration/{bin}/apply         {force}: write overlay + audit, apply live
    DELETE /api/installer/calibration/{bin}               cancel; nothing is written
    GET    /api/installer/catalogue/{code}                a catalogue item by GTIN, store SKU or in-store code
    POST   /api/installer/binding/{bin}/scan              {scanner?}: wait for the next product scan
    GET    /api/installer/binding/{bin}/scan              waiting (with the last refused code) / scanned
    DELETE /api/installer/binding/{bin}/scan              stop waiting
    POST   /api/installer/binding/{bin}/preview           {code | latest scan} → item, before → after
    POST   /api/installer/binding/{bin}                   {sku, unit_weight_g?, …}: write + apply live
    POST   /api/installer/pick-test/{bin}                 start "take one item"
    GET    /api/installer/pick-test/{bin}                 waiting / passed / failed
    GET    /api/installer/commissioning                   the commissioning record

The wizard hears raw samples through `Gateway.raw_taps` (before the engine, so a mis-calibrated bin can still
be calibrated); its state machine is `edge.calibration.CalibrationWizard`. Writes go to the overlay in
`data_dir` (edge/calibration.py says why not the store YAML) and the running gateway switches the bin at once
(`Gateway.apply_bin`). Blocking file I/O runs off the event loop.

Binding by scan: the page arms a *scan wait* for the bin; only while it waits does the installer take a product
scan, from the chosen scanner or else from any `handheld`/`receiving` one (never a lane's: its scans are sales),
off the gateway's live stream (`Gateway.alerts_stream`, where `edge.devices.scanners` publishes every scan). A
scan the store's catalogue (`catalogue:`, `LoadedConfig.catalogue`) does not know is refused and the wait goes
on; a known one ends it with the item and the proposed binding (the catalogue's unit weight and spread). One
wait at a time in the whole gateway: a scanner cannot say which bin it was pointed at. Other scan consumers
(the stocktake) ask `InstallerService.takes_scans_from` to leave a claimed scanner's scans alone.

Each calibration, binding or pick test rewrites the commissioning record and also hands it to the gateway as a
`commissioning` event (`commissioning_payload` → `Gateway.commissioning_written`), so the hub's HQ sees which
stores are commissioned; reading the record (`GET …/commissioning`) writes the file but sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, ValidationError

from cloud_bridge.contract import Commissioning, rfc3339
from drivers.modbus.models import Sample
from edge.audit import audit_installer
from edge.calibration import (
    DEFAULT_TOLERANCE_G,
    DEFAULT_TOLERANCE_PCT,
    DEFAULT_WINDOW_S,
    Binding,
    CalibrationError,
    CalibrationWizard,
    RawSample,
    Step,
    append_audit,
    calibration_dict,
    commissioning_record,
    read_audit,
    run_file_op,
    update_overlay,
    write_commissioning,
)
from edge.config import Bin
from edge.retail.catalogue import Catalogue, CatalogueItem, ScanMatch, normalise_gtin
from edge.retail.errors import UnknownItem

if TYPE_CHECKING:
    from edge.gateway import Gateway

log = logging.getLogger(__name__)

WEB_DIR: Final = Path(__file__).resolve().parent / "web"
PICK_TEST_TIMEOUT_S: Final = 60.0
SCAN_WAIT_TIMEOUT_S: Final = 120.0
"""How long the bind wizard waits for a scan: time to fetch the handheld and find the product's barcode."""
SCAN_ROLES: Final = frozenset({"handheld", "receiving"})
"""Scanners the bind wizard listens to when none is chosen; a lane scanner's scans are sales, never bindings."""


# --- request bodies -----------------------------------------------------------------------------------------


class StartCalibration(BaseModel):
    """Body of POST /api/installer/calibration/{bin}."""

    installer: str = Field(default="installer", min_length=1, max_length=64)
    tare_on_plate: bool = Field(default=True, description="the tray stays on the plate while zeroing")
    tolerance_pct: float = Field(default=DEFAULT_TOLERANCE_PCT, ge=0, le=20)
    tolerance_g: float = Field(default=DEFAULT_TOLERANCE_G, ge=0)
    window_s: float = Field(default=DEFAULT_WINDOW_S, gt=0, le=30)


class Loaded(BaseModel):
    """Body of POST …/loaded."""

    mass_g: float = Field(gt=0, description="the known mass on the plate, grams")


class Apply(BaseModel):
    """Body of POST …/apply."""

    force: bool = Field(default=False, description="write even though the check failed")


class BindPreview(BaseModel):
    """Body of POST /api/installer/binding/{bin}/preview: a typed code, or the latest scan (of one scanner)."""

    code: str | None = Field(
        default=None, max_length=64, description="a GTIN, a store SKU or an in-store (2x) code, as typed"
    )
    gtin: str | None = Field(default=None, max_length=32, description="the older name of `code`")
    scanner: str | None = Field(default=None, description="take the latest scan of this scanner")
    unit_weight_g: float | None = Field(default=None, gt=0, description="instead of the catalogue's")


class BindApply(BaseModel):
    """Body of POST /api/installer/binding/{bin}."""

    sku: str = Field(min_length=1, max_length=32)
    unit_weight_g: float | None = Field(
        default=None, gt=0, description="default: the catalogue's, else the bin's current"
    )
    unit_weight_spread_g: float | None = Field(default=None, ge=0, description="default: the catalogue's")
    installer: str = Field(default="installer", min_length=1, max_length=64)
    source: str | None = Field(
        default=None, max_length=64, description="`typed` or `scan:{scanner}`, for the audit"
    )


class ScanWaitStart(BaseModel):
    """Body of POST /api/installer/binding/{bin}/scan."""

    scanner: str | None = Field(
        default=None, description="this scanner only; else any handheld/receiving one"
    )
    timeout_s: float = Field(default=SCAN_WAIT_TIMEOUT_S, gt=0, le=600)


class PickTestStart(BaseModel):
    """Body of POST /api/installer/pick-test/{bin}."""

    installer: str = Field(default="installer", min_length=1, max_length=64)
    timeout_s: float = Field(default=PICK_TEST_TIMEOUT_S, gt=0, le=600)


# --- the service ----------------------------------------------------------------------------------------------


@dataclass
class _Session:
    wizard: CalibrationWizard
    installer: str
    tap: Callable[[Sample], None]


@dataclass
class PickTest:
    """One "take one item" test: the first count change of the bin must be exactly −1 within the timeout."""

    bin_id: str
    installer: str
    count_before: int
    timeout_s: float
    started_at: str
    state: Literal["waiting", "passed", "failed"] = "waiting"
    count_after: int | None = None
    detail: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "bin_id": self.bin_id,
            "installer": self.installer,
            "state": self.state,
            "count_before": self.count_before,
            "count_after": self.count_after,
            "timeout_s": self.timeout_s,
            "started_at": self.started_at,
            "detail": self.detail,
        }


class Refused(Exception):
    """A code the bind wizard will not bind: unknown to the catalogue, or not a counted product."""


@dataclass
class ScanWait:
    """The bind wizard waiting for a product scan for one bin (see the module docstring)."""

    bin_id: str
    scanners: frozenset[str]
    chosen: str | None
    timeout_s: float
    started_at: str
    state: Literal["waiting", "scanned", "timeout", "cancelled"] = "waiting"
    scan: dict[str, Any] | None = None
    proposal: dict[str, Any] | None = None
    refused: dict[str, Any] | None = None
    """The latest scan refused while waiting (code, scanner, reason); the wait goes on."""
    refusals: int = 0
    task: asyncio.Task[None] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "bin_id": self.bin_id,
            "state": self.state,
            "scanner": self.chosen,
            "scanners": sorted(self.scanners),
            "timeout_s": self.timeout_s,
            "started_at": self.started_at,
            "scan": self.scan,
            "proposal": self.proposal,
            "refused": self.refused,
            "refusals": self.refusals,
        }


@dataclass(frozen=True, slots=True)
class _Code:
    """A typed code or a scan record as `Catalogue.lookup_scan` reads it (`ClassifiedScan`)."""

    gtin: str
    net_weight_kg: Decimal | None = None
    price: Decimal | None = None


def _decimal(value: object) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def item_dict(item: CatalogueItem) -> dict[str, Any]:
    """A catalogue item as the page shows it (price as the catalogue's CNY string)."""
    return {
        "gtin": item.gtin,
        "sku": item.sku,
        "name": {"zh": item.name.zh, "en": item.name.en},
        "price": str(item.price),
        "unit_weight_g": item.unit_weight_g,
        "unit_weight_spread_g": item.unit_weight_spread_g,
        "category": item.category,
        "variable_measure": item.variable_measure,
    }


def lookup_code(catalogue: Catalogue, code: str) -> ScanMatch:
    """A typed code in the catalogue: a GTIN (8/12/13/14 digits, check digit verified), an in-store 2x code
    (its PLU), or a store SKU alias. `Refused` when unknown; HTTP 422 for a GTIN with a wrong check digit."""
    code = code.strip()
    if code.isascii() and code.isdigit() and len(code) in (8, 12, 13, 14):
        try:
            gtin = normalise_gtin(code)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        return lookup_scan(catalogue, _Code(gtin))
    item = catalogue.get(code)
    if item is None:
        raise Refused(f"{code} is not in the catalogue")
    return ScanMatch(item, code)


def lookup_scan(catalogue: Catalogue, scan: _Code) -> ScanMatch:
    """A product scan in the catalogue (GTIN first, then the in-store code layouts); `Refused` when unknown."""
    try:
        return catalogue.lookup_scan(scan)
    except UnknownItem as exc:
        raise Refused(f"{exc.code} is {exc.reason}") from exc


class InstallerService:
    """Calibration sessions, bindings and pick tests of one running gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.data_dir = Path(gateway.store_cfg.data_dir)
        self.sessions: dict[str, _Session] = {}
        self.tests: dict[str, PickTest] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.scan_wait: ScanWait | None = None
        """The bind wizard's scan wait (one in the whole gateway), the latest one until a new one starts."""
        self.commissioning_not_sent = 0
        """Records written locally but not queued for the hub (bad field, or the outbox write failed)."""
        self._edit_lock = asyncio.Lock()
        """One overlay + audit + live-apply at a time, in arrival order (asyncio.Lock is FIFO): the file work
        runs in a worker thread, so without it two requests could interleave and a bin's audit lines land out
        of order, or a second apply of the same wizard write twice."""
        self._record_lock = asyncio.Lock()
        """One rebuild-write-send of the commissioning record at a time, so an older snapshot never lands (on
        disk or at the hub) after a newer one."""

    def bin(self, bin_id: str) -> Bin:
        """The bin as it runs now; 404 when unknown, 422 when it is not weighed (a camera-only bin)."""
        b = self.gw.bins.get(bin_id)
        if b is None:
            raise HTTPException(status_code=404, detail=f"no bin {bin_id!r}")
        if getattr(b, "device", None) is None:
            raise HTTPException(status_code=422, detail=f"bin {bin_id!r} has no weighing device")
        return b

    # --- calibration ----------------------------------------------------------------------------------

    def start(self, bin_id: str, body: StartCalibration) -> dict[str, Any]:
        """A new wizard for the bin (an unfinished one is cancelled first)."""
        b = self.bin(bin_id)
        self.cancel(bin_id)
        wizard = CalibrationWizard(
            b,
            window_s=body.window_s,
            tolerance_pct=body.tolerance_pct,
            tolerance_g=body.tolerance_g,
            tare_on_plate=body.tare_on_plate,
        )
        device, channel = b.device, b.channel

        def tap(sample: Sample) -> None:
            if sample.device_id != device:
                return
            for r in sample.readings:
                if r.channel == channel and not (r.overload or r.fault):
                    wizard.feed(RawSample(r.value, sample.ts, r.stable))

        self.sessions[bin_id] = _Session(wizard, body.installer, tap)
        self.gw.raw_taps.add(tap)
        return wizard.status()

    def session(self, bin_id: str) -> _Session:
        """The running wizard of a bin; 404 when none."""
        self.bin(bin_id)
        s = self.sessions.get(bin_id)
        if s is None:
            raise HTTPException(status_code=404, detail=f"no calibration running for bin {bin_id!r}")
        return s

    def cancel(self, bin_id: str) -> dict[str, Any] | None:
        """Stop a wizard; nothing is written."""
        s = self.sessions.pop(bin_id, None)
        if s is None:
            return None
        self.gw.raw_taps.discard(s.tap)
        s.wizard.cancel()
        return s.wizard.status()

    async def apply(self, bin_id: str, force: bool) -> dict[str, Any]:
        """Write the checked calibration (overlay + audit), switch the live bin, end the session."""
        async with self._edit_lock:
            out = await self._apply(bin_id, force)
        await self._write_record(send=True)
        return out

    async def _apply(self, bin_id: str, force: bool) -> dict[str, Any]:
        s = self.session(bin_id)
        w = s.wizard
        if w.step is not Step.CHECKED or w.check is None:
            raise HTTPException(
                status_code=409, detail=f"nothing to apply: the wizard is at {w.step.value!r}"
            )
        if not w.check.ok and not force:
            raise HTTPException(
                status_code=409,
                detail=(
                    f"check failed: {w.check.error_g:+.2f} g ({w.check.error_pct:+.3f} %) against "
                    f"±{w.check.tolerance_g:.2f} g; recalibrate, or apply with force"
                ),
            )
        after = w.result()
        if after is None:  # unreachable: CHECKED implies zero and span
            raise HTTPException(status_code=409, detail="no calibration result")
        b = self.gw.bins[bin_id]
        entry = {
            "kind": "calibration",
            "bin_id": bin_id,
            "installer": s.installer,
            "before": calibration_dict(b.calibration),
            "after": calibration_dict(after),
            "check": w.check.as_dict(),
            "forced": bool(force and not w.check.ok),
        }
        await run_file_op(update_overlay, self.data_dir, bin_id, calibration=after)
        line = await run_file_op(append_audit, self.data_dir, entry)
        await audit_installer(self.data_dir, entry)  # the gateway's audit log, with the logged-in user
        await self.gw.apply_bin(b.model_copy(update={"calibration": after}))
        w.mark_applied()
        self.sessions.pop(bin_id, None)
        self.gw.raw_taps.discard(s.tap)
        return {**w.status(), "audit": line}

    # --- binding --------------------------------------------------------------------------------------

    @property
    def catalogue(self) -> Catalogue | None:
        """The store's catalogue (`catalogue:` in the store config), None when it names none."""
        return self.gw.config.catalogue

    def lookup(self, code: str) -> dict[str, Any]:
        """GET …/catalogue/{code}: the item; 404 when there is no catalogue or the code is not in it."""
        cat = self.catalogue
        if cat is None:
            raise HTTPException(
                status_code=404, detail="no catalogue: the store config names none (`catalogue:`)"
            )
        try:
            match = lookup_code(cat, code)
        except Refused as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        return {**item_dict(match.item), "code": match.code, "match": match.source}

    def _proposal(
        self, b: Bin, *, sku: str, item: CatalogueItem | None, unit_weight_g: float | None, source: str
    ) -> dict[str, Any]:
        """Before → after of binding `b` to `sku` (the catalogue's `item`, when there is a catalogue).

        The unit weight is the typed one, else the catalogue's, else the bin's current; the spread is the
        catalogue's whenever the catalogue has a unit weight (its spread belongs to it), else unchanged.
        """
        if item is not None and item.variable_measure:
            raise Refused(
                f"{item.gtin} ({item.name.en}) is sold by weight: a weighed bin counts units, so it needs a"
                " product sold per unit"
            )
        before: dict[str, Any] = {"sku": b.sku, "unit_weight_g": b.unit_weight_g}
        after: dict[str, Any] = {"sku": sku, "unit_weight_g": b.unit_weight_g}
        weight_source = "bin"
        if item is not None and item.unit_weight_g is not None:
            after["unit_weight_g"] = item.unit_weight_g
            weight_source = "catalogue"
            before["unit_weight_spread_g"] = b.unit_weight_spread_g
            after["unit_weight_spread_g"] = item.unit_weight_spread_g
        if unit_weight_g is not None:
            after["unit_weight_g"] = unit_weight_g
            weight_source = "typed"
        return {
            "bin_id": b.id,
            "source": source,
            "item": None if item is None else item_dict(item),
            "unit_weight_source": weight_source,
            "before": before,
            "after": after,
            "changed": before != after,
        }

    def _propose_code(self, b: Bin, code: str, unit_weight_g: float | None, source: str) -> dict[str, Any]:
        cat = self.catalogue
        if cat is None:
            sku = _normalise_gtin(code)
            return self._proposal(b, sku=sku, item=None, unit_weight_g=unit_weight_g, source=source)
        match = lookup_code(cat, code)
        return self._proposal(
            b, sku=match.item.gtin, item=match.item, unit_weight_g=unit_weight_g, source=source
        )

    def _propose_scan(self, b: Bin, record: Mapping[str, Any], unit_weight_g: float | None) -> dict[str, Any]:
        source = f"scan:{record.get('device')}"
        cat = self.catalogue
        if cat is None:
            sku = _normalise_gtin(str(record["gtin"]))
            return self._proposal(b, sku=sku, item=None, unit_weight_g=unit_weight_g, source=source)
        scan = _Code(
            str(record["gtin"]), _decimal(record.get("net_weight_kg")), _decimal(record.get("price"))
        )
        match = lookup_scan(cat, scan)
        return self._proposal(
            b, sku=match.item.gtin, item=match.item, unit_weight_g=unit_weight_g, source=source
        )

    def preview_binding(self, bin_id: str, body: BindPreview) -> dict[str, Any]:
        """What binding the bin to a code (typed, or the latest scan) would change: the item, before → after."""
        b = self.bin(bin_id)
        code = body.code if body.code is not None else body.gtin
        try:
            if code is not None:
                return self._propose_code(b, code, body.unit_weight_g, "typed")
            scanners = self.gw.scanners
            scans = [] if scanners is None else scanners.recent(body.scanner, 20)
            product = next((x for x in scans if x.get("kind") == "product" and x.get("gtin")), None)
            if product is None:
                raise HTTPException(status_code=404, detail="no product scan yet: scan the item at the bin")
            return self._propose_scan(b, product, body.unit_weight_g)
        except Refused as exc:
            raise HTTPException(status_code=422, detail=f"binding refused: {exc}") from exc

    # --- waiting for a scan -----------------------------------------------------------------------------

    def _scan_sources(self, chosen: str | None) -> frozenset[str]:
        scanners = self.gw.store_cfg.scanners
        if chosen is not None:
            cfg = next((sc for sc in scanners if sc.id == chosen), None)
            if cfg is None:
                raise HTTPException(status_code=404, detail=f"no scanner {chosen!r}")
            if cfg.role == "lane":
                raise HTTPException(
                    status_code=422,
                    detail=f"scanner {chosen!r} is a checkout lane's: use a handheld (its scans are sales)",
                )
            return frozenset({chosen})
        found = frozenset(sc.id for sc in scanners if sc.role in SCAN_ROLES)
        if not found:
            raise HTTPException(
                status_code=409,
                detail="no handheld or receiving scanner in the store config: type the barcode's digits",
            )
        return found

    def takes_scans_from(self, scanner_id: str) -> bool:
        """True while the bind wizard waits for a scan from this scanner (other consumers leave it alone)."""
        w = self.scan_wait
        return w is not None and w.state == "waiting" and scanner_id in w.scanners

    async def start_scan_wait(self, bin_id: str, body: ScanWaitStart) -> dict[str, Any]:
        """Wait for the next product scan for the bin (an earlier wait, of any bin, is cancelled)."""
        self.bin(bin_id)
        sources = self._scan_sources(body.scanner)
        await self.cancel_scan_wait()
        wait = ScanWait(bin_id, sources, body.scanner, body.timeout_s, rfc3339(time.time()))
        self.scan_wait = wait
        subscribed = asyncio.Event()
        task = asyncio.create_task(self._wait_scan(wait, subscribed), name=f"installer.scan_wait[{bin_id}]")
        wait.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await subscribed.wait()  # a scan made right after this answer is not missed
        return wait.as_dict()

    async def _wait_scan(self, wait: ScanWait, subscribed: asyncio.Event) -> None:
        try:
            async with self.gw.alerts_stream.subscribe() as queue:
                subscribed.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait.timeout_s):
                        while wait.state == "waiting":
                            self._consider(wait, await queue.get())
                if wait.state == "waiting":
                    wait.state = "timeout"
        finally:
            subscribed.set()
            if wait.state == "waiting":
                wait.state = "cancelled"

    def _consider(self, wait: ScanWait, item: Mapping[str, Any]) -> None:
        """One stream item: a product scan from a listened-to scanner ends the wait, unless it is refused."""
        scan = item.get("scan") if item.get("type") == "scan" else None
        if not isinstance(scan, Mapping) or scan.get("kind") != "product" or not scan.get("gtin"):
            return
        if scan.get("device") not in wait.scanners:
            return
        record = {k: scan[k] for k in ("device", "gtin", "raw", "ts", "net_weight_kg", "price") if k in scan}
        b = self.gw.bins.get(wait.bin_id)
        if b is None:
            return
        try:
            proposal = self._propose_scan(b, record, None)
        except (Refused, HTTPException) as exc:
            reason = exc.detail if isinstance(exc, HTTPException) else str(exc)
            wait.refused = {**record, "reason": f"binding refused: {reason}"}
            wait.refusals += 1
            log.info("bind wizard for bin %s refused scan %s: %s", wait.bin_id, record.get("gtin"), reason)
            return
        wait.scan = record
        wait.proposal = proposal
        wait.state = "scanned"

    def scan_status(self, bin_id: str) -> dict[str, Any]:
        """The bin's scan wait; 404 when the latest wait is another bin's (or none ran)."""
        self.bin(bin_id)
        w = self.scan_wait
        if w is None or w.bin_id != bin_id:
            raise HTTPException(status_code=404, detail=f"no scan wait for bin {bin_id!r}")
        return w.as_dict()

    async def cancel_scan_wait(self, bin_id: str | None = None) -> dict[str, Any] | None:
        """Stop waiting (the given bin's wait only, when named); the status, or None when nothing waited."""
        w = self.scan_wait
        if w is None or (bin_id is not None and w.bin_id != bin_id):
            return None
        if w.task is not None and not w.task.done():
            w.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await w.task
        return w.as_dict()

    # --- writing the binding ----------------------------------------------------------------------------

    async def bind(self, bin_id: str, body: BindApply) -> dict[str, Any]:
        """Bind the bin to a product: overlay + audit, then the live bin."""
        async with self._edit_lock:
            out = await self._bind(bin_id, body)
        await self._write_record(send=True)
        return out

    async def _bind(self, bin_id: str, body: BindApply) -> dict[str, Any]:
        b = self.bin(bin_id)
        # A GTIN is checked and stored as GTIN-14; a store-internal SKU (other lengths, letters) is kept as typed.
        looks_gtin = body.sku.isascii() and body.sku.isdigit() and len(body.sku) in (8, 12, 13, 14)
        sku = _normalise_gtin(body.sku) if looks_gtin else body.sku
        item: CatalogueItem | None = None
        cat = self.catalogue
        if cat is not None:
            # The store config requires every bin's SKU in the catalogue; binding anything else would stop
            # the gateway at its next start.
            item = cat.get(sku)
            if item is None:
                raise HTTPException(
                    status_code=422,
                    detail=f"binding refused: {sku} is not in the catalogue (every bin's SKU must be in it)",
                )
            if item.variable_measure:
                raise HTTPException(
                    status_code=422,
                    detail=f"binding refused: {item.gtin} is sold by weight; a weighed bin counts units",
                )
        unit, spread = body.unit_weight_g, body.unit_weight_spread_g
        if item is not None and item.unit_weight_g is not None:
            unit = item.unit_weight_g if unit is None else unit
            spread = item.unit_weight_spread_g if spread is None else spread
        name = None if item is None else {"zh": item.name.zh, "en": item.name.en}
        binding = Binding(sku=sku, unit_weight_g=unit, unit_weight_spread_g=spread, name=name)
        try:
            new = Bin.model_validate({**b.model_dump(), **binding.as_dict()})
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        before: dict[str, Any] = {"sku": b.sku, "unit_weight_g": b.unit_weight_g}
        after: dict[str, Any] = {"sku": new.sku, "unit_weight_g": new.unit_weight_g}
        if spread is not None:  # only when this binding sets it (as in the overlay)
            before["unit_weight_spread_g"] = b.unit_weight_spread_g
            after["unit_weight_spread_g"] = new.unit_weight_spread_g
        entry: dict[str, Any] = {
            "kind": "binding",
            "bin_id": bin_id,
            "installer": body.installer,
            "before": before,
            "after": after,
        }
        if item is not None:
            entry["item"] = {
                "gtin": item.gtin,
                "name": {"zh": item.name.zh, "en": item.name.en},
                "unit_weight_g": item.unit_weight_g,
                "unit_weight_spread_g": item.unit_weight_spread_g,
            }
        if body.source is not None:
            entry["source"] = body.source
        await run_file_op(update_overlay, self.data_dir, bin_id, binding=binding)
        line = await run_file_op(append_audit, self.data_dir, entry)
        await audit_installer(self.data_dir, entry)  # the gateway's audit log, with the logged-in user
        await self.gw.apply_bin(new)
        return {
            "bin": self.gw.bin_view(bin_id),
            "audit": line,
            "item": None if item is None else item_dict(item),
        }

    # --- pick test ------------------------------------------------------------------------------------

    async def start_pick_test(self, bin_id: str, body: PickTestStart) -> dict[str, Any]:
        """Arm the test: the bin needs a known, certain count; the first change must be exactly −1."""
        self.bin(bin_id)
        est = self.gw.estimators.get(bin_id)
        if est is None or est.count is None or est.uncertain:
            raise HTTPException(
                status_code=409, detail=f"bin {bin_id!r} has no certain count yet: wait, then retry"
            )
        old = self.tests.get(bin_id)
        if old is not None and old.state == "waiting":
            raise HTTPException(status_code=409, detail=f"a pick test is already waiting on bin {bin_id!r}")
        test = PickTest(bin_id, body.installer, est.count, body.timeout_s, rfc3339(time.time()))
        self.tests[bin_id] = test
        subscribed = asyncio.Event()
        task = asyncio.create_task(self._watch(test, subscribed), name=f"installer.pick_test[{bin_id}]")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await subscribed.wait()
        return test.as_dict()

    async def _watch(self, test: PickTest, subscribed: asyncio.Event) -> None:
        try:
            async with self.gw.alerts_stream.subscribe() as queue:
                subscribed.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(test.timeout_s):
                        while True:
                            item = await queue.get()
                            view = item.get("bin") if item.get("type") == "stock" else None
                            if not view or view.get("bin_id") != test.bin_id:
                                continue
                            count = view.get("count")
                            if count is None or count == test.count_before:
                                continue
                            test.count_after = int(count)
                            delta = test.count_after - test.count_before
                            test.state = "passed" if delta == -1 else "failed"
                            test.detail = f"counted {delta:+d}" + ("" if delta == -1 else " (expected −1)")
                            break
                if test.state == "waiting":
                    test.state = "failed"
                    test.detail = f"no count change within {test.timeout_s:g} s"
        finally:
            subscribed.set()
            if test.state == "waiting":
                test.state = "failed"
                test.detail = "cancelled"
            test.done.set()
        entry = {"kind": "pick_test", "bin_id": test.bin_id, "installer": test.installer, **test.as_dict()}
        async with self._edit_lock:
            await run_file_op(append_audit, self.data_dir, entry)
        await audit_installer(self.data_dir, entry)
        await self._write_record(send=True)

    def pick_test(self, bin_id: str) -> dict[str, Any]:
        """The bin's latest pick test; 404 when none ran."""
        self.bin(bin_id)
        test = self.tests.get(bin_id)
        if test is None:
            raise HTTPException(status_code=404, detail=f"no pick test on bin {bin_id!r}")
        return test.as_dict()

    # --- the record -----------------------------------------------------------------------------------

    async def record(self) -> dict[str, Any]:
        """The commissioning record now (also kept in data_dir)."""
        return await self._write_record()

    async def _write_record(self, *, send: bool = False) -> dict[str, Any]:
        """Rebuild the record from the audit trail and write it; with `send`, also queue it for the hub.

        The event is a whole snapshot, so one that cannot be sent (counted in `commissioning_not_sent`) is
        made good by the next change's; the local file and the installer's request never fail for it.
        """
        async with self._record_lock:
            audit = await run_file_op(read_audit, self.data_dir)
            rec = commissioning_record(
                self.gw.store_cfg.store_id, self.gw.gateway_id, self.gw.device_views(), audit
            )
            await run_file_op(write_commissioning, self.data_dir, rec)
            out = rec.as_dict()
            if send:
                await self._send_record(out)
        return out

    async def _send_record(self, record: Mapping[str, Any]) -> None:
        try:
            payload = commissioning_payload(record)
        except (ValidationError, TypeError, KeyError) as exc:
            self.commissioning_not_sent += 1
            log.warning("commissioning record not sent to the hub: it does not fit the contract: %s", exc)
            return
        try:
            await self.gw.commissioning_written(payload)
        except Exception:  # the record is on disk; the next change sends a fresh snapshot
            self.commissioning_not_sent += 1
            log.exception("commissioning record not queued for the hub")


def _pick(entry: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: entry[k] for k in keys if k in entry}


def commissioning_payload(record: Mapping[str, Any]) -> Commissioning:
    """The contract's `Commissioning` from a record (`CommissioningRecord.as_dict()`).

    Fields are picked by name, not passed through: the audit entries carry more than the wire needs (`kind`,
    `bin_id`, a pick test's timeout) and may grow, and the contract refuses unknown fields, so the wire form
    stays what docs/wire-contract.md says whatever the local record gains. ValidationError when a field does
    not fit (e.g. a non-finite check figure).
    """
    cal_keys = ("zero", "span_g_per_unit", "calibrated_at")
    check_keys = ("mass_g", "measured_g", "error_g", "error_pct", "tolerance_g", "ok")
    calibrations = {
        bin_id: {
            "before": _pick(e.get("before") or {}, *cal_keys),
            "after": _pick(e.get("after") or {}, *cal_keys),
            "check": None if e.get("check") is None else _pick(e["check"], *check_keys),
            **_pick(e, "forced", "installer", "ts"),
        }
        for bin_id, e in record.get("calibrations", {}).items()
    }
    bindings = {
        bin_id: {
            "before": _pick(e.get("before") or {}, "sku", "unit_weight_g"),
            "after": _pick(e.get("after") or {}, "sku", "unit_weight_g"),
            **_pick(e, "installer", "ts", "source"),
            **({"item": _bound_item(e["item"])} if isinstance(e.get("item"), Mapping) else {}),
        }
        for bin_id, e in record.get("bindings", {}).items()
    }
    tests = {
        bin_id: _pick(e, "state", "count_before", "count_after", "installer", "started_at", "detail", "ts")
        for bin_id, e in record.get("tests", {}).items()
    }
    devices = [
        {"id": d.get("device_id", d.get("id")), "family": d.get("family"), "online": bool(d.get("online"))}
        for d in record.get("devices", [])
    ]
    return Commissioning.model_validate(
        {
            "store_id": record["store_id"],
            "gateway_id": record["gateway_id"],
            "generated_at": record["generated_at"],
            "installers": list(record.get("installers", [])),
            "devices": devices,
            "calibrations": calibrations,
            "bindings": bindings,
            "tests": tests,
        }
    )


def _bound_item(item: Mapping[str, Any]) -> dict[str, Any]:
    name = item.get("name") or {}
    return {
        "gtin": item.get("gtin"),
        "name_zh": name.get("zh"),
        "name_en": name.get("en"),
        **_pick(item, "unit_weight_g", "unit_weight_spread_g"),
    }


def _normalise_gtin(code: str) -> str:
    """GTIN-14 with a verified check digit (GS1 mod 10); HTTP 422 naming the problem."""
    try:
        return normalise_gtin(code)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc


def installer_router(gateway: Gateway) -> APIRouter:
    """The installer routes bound to one running gateway (the module docstring lists them)."""
    svc = InstallerService(gateway)
    r = APIRouter()

    def wizard_call(bin_id: str, action: str, mass_g: float | None = None) -> dict[str, Any]:
        w = svc.session(bin_id).wizard
        try:
            if action == "empty":
                w.confirm_empty()
            elif mass_g is not None:
                w.confirm_loaded(mass_g)
        except CalibrationError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        return w.status()

    @r.get("/installer", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "installer.html", media_type="text/html; charset=utf-8")

    @r.get("/api/installer/calibration/{bin_id}")
    async def cal_status(bin_id: str) -> dict[str, Any]:
        return svc.session(bin_id).wizard.status()

    @r.post("/api/installer/calibration/{bin_id}")
    async def cal_start(bin_id: str, body: StartCalibration | None = None) -> dict[str, Any]:
        return svc.start(bin_id, body or StartCalibration())

    @r.post("/api/installer/calibration/{bin_id}/empty")
    async def cal_empty(bin_id: str) -> dict[str, Any]:
        return wizard_call(bin_id, "empty")

    @r.post("/api/installer/calibration/{bin_id}/loaded")
    async def cal_loaded(bin_id: str, body: Loaded) -> dict[str, Any]:
        return wizard_call(bin_id, "loaded", body.mass_g)

    @r.post("/api/installer/calibration/{bin_id}/apply")
    async def cal_apply(bin_id: str, body: Apply | None = None) -> dict[str, Any]:
        return await svc.apply(bin_id, (body or Apply()).force)

    @r.delete("/api/installer/calibration/{bin_id}")
    async def cal_cancel(bin_id: str) -> dict[str, Any]:
        svc.bin(bin_id)
        out = svc.cancel(bin_id)
        return out if out is not None else {"bin_id": bin_id, "step": Step.CANCELLED.value}

    @r.get("/api/installer/catalogue/{code}")
    async def catalogue_item(code: str) -> dict[str, Any]:
        return svc.lookup(code)

    @r.post("/api/installer/binding/{bin_id}/scan")
    async def scan_start(bin_id: str, body: ScanWaitStart | None = None) -> dict[str, Any]:
        return await svc.start_scan_wait(bin_id, body or ScanWaitStart())

    @r.get("/api/installer/binding/{bin_id}/scan")
    async def scan_status(bin_id: str) -> dict[str, Any]:
        return svc.scan_status(bin_id)

    @r.delete("/api/installer/binding/{bin_id}/scan")
    async def scan_cancel(bin_id: str) -> dict[str, Any]:
        svc.bin(bin_id)
        out = await svc.cancel_scan_wait(bin_id)
        if out is None:
            raise HTTPException(status_code=404, detail=f"no scan wait for bin {bin_id!r}")
        return out

    @r.post("/api/installer/binding/{bin_id}/preview")
    async def bind_preview(bin_id: str, body: BindPreview) -> dict[str, Any]:
        return svc.preview_binding(bin_id, body)

    @r.post("/api/installer/binding/{bin_id}")
    async def bind_apply(bin_id: str, body: BindApply) -> dict[str, Any]:
        return await svc.bind(bin_id, body)

    @r.post("/api/installer/pick-test/{bin_id}")
    async def pick_start(bin_id: str, body: PickTestStart | None = None) -> dict[str, Any]:
        return await svc.start_pick_test(bin_id, body or PickTestStart())

    @r.get("/api/installer/pick-test/{bin_id}")
    async def pick_status(bin_id: str) -> dict[str, Any]:
        return svc.pick_test(bin_id)

    @r.get("/api/installer/commissioning")
    async def commissioning() -> dict[str, Any]:
        return await svc.record()

    return r


__all__ = [
    "InstallerService",
    "PickTest",
    "Refused",
    "ScanWait",
    "commissioning_payload",
    "installer_router",
    "item_dict",
    "lookup_code",
]
