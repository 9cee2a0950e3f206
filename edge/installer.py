"""The installer's API and page: calibrate a bin, bind it to a product, pick-test it, see the commissioning record.

Mounted by `edge.api.create_app` (`app.include_router(installer_router(gateway))`). Routes::

    GET    /installer                                     the page (edge/web/installer.html)
    GET    /api/installer/calibration/{bin}               the wizard's status (404 when none runs)
    POST   /api/installer/calibration/{bin}               start (or restart) the wizard for a bin
    POST   /api/installer/calibration/{bin}/empty         the plate is empty → wait for a stable zero
    POST   /api/installer/calibration/{bin}/loaded        {mass_g} is on the plate → span, then check
    POST   /api/installer/calibration/{bin}/apply         {force}: write overlay + audit, apply live
    DELETE /api/installer/calibration/{bin}               cancel; nothing is written
    POST   /api/installer/binding/{bin}/preview           {gtin | latest scan} → before → after
    POST   /api/installer/binding/{bin}                   {sku, unit_weight_g}: write + apply live
    POST   /api/installer/pick-test/{bin}                 start "take one item"
    GET    /api/installer/pick-test/{bin}                 waiting / passed / failed
    GET    /api/installer/commissioning                   the commissioning record

The wizard hears raw samples through `Gateway.raw_taps` (before the engine, so a mis-calibrated bin can still
be calibrated); its state machine is `edge.calibration.CalibrationWizard`. Writes go to the overlay in
`data_dir` (edge/calibration.py says why not the store YAML) and the running gateway switches the bin at once
(`Gateway.apply_bin`). Blocking file I/O runs off the event loop.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, ValidationError

from cloud_bridge.contract import Commissioning, rfc3339
from drivers.modbus.models import Sample
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

if TYPE_CHECKING:
    from edge.gateway import Gateway

log = logging.getLogger(__name__)

WEB_DIR: Final = Path(__file__).resolve().parent / "web"
PICK_TEST_TIMEOUT_S: Final = 60.0


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
    """Body of POST /api/installer/binding/{bin}/preview: a typed GTIN, or the latest scan (of one scanner)."""

    gtin: str | None = Field(default=None, max_length=32)
    scanner: str | None = Field(default=None, description="take the latest scan of this scanner")
    unit_weight_g: float | None = Field(default=None, gt=0)


class BindApply(BaseModel):
    """Body of POST /api/installer/binding/{bin}."""

    sku: str = Field(min_length=1, max_length=32)
    unit_weight_g: float | None = Field(default=None, gt=0)
    installer: str = Field(default="installer", min_length=1, max_length=64)


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


class InstallerService:
    """Calibration sessions, bindings and pick tests of one running gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.data_dir = Path(gateway.store_cfg.data_dir)
        self.sessions: dict[str, _Session] = {}
        self.tests: dict[str, PickTest] = {}
        self._tasks: set[asyncio.Task[None]] = set()
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
        await self.gw.apply_bin(b.model_copy(update={"calibration": after}))
        w.mark_applied()
        self.sessions.pop(bin_id, None)
        self.gw.raw_taps.discard(s.tap)
        return {**w.status(), "audit": line}

    # --- binding --------------------------------------------------------------------------------------

    def preview_binding(self, bin_id: str, body: BindPreview) -> dict[str, Any]:
        """What binding the bin to a GTIN (typed, or the latest scan) would change: before → after."""
        b = self.bin(bin_id)
        source = "typed"
        code = body.gtin
        if code is None:
            scanners = self.gw.scanners
            scans = [] if scanners is None else scanners.recent(body.scanner, 20)
            product = next((x for x in scans if x.get("kind") == "product" and x.get("gtin")), None)
            if product is None:
                raise HTTPException(status_code=404, detail="no product scan yet: scan the item at the bin")
            code, source = str(product["gtin"]), f"scan:{product.get('device')}"
        sku = _normalise_gtin(code)
        unit = body.unit_weight_g if body.unit_weight_g is not None else b.unit_weight_g
        before = {"sku": b.sku, "unit_weight_g": b.unit_weight_g}
        after = {"sku": sku, "unit_weight_g": unit}
        return {
            "bin_id": bin_id,
            "source": source,
            "before": before,
            "after": after,
            "changed": before != after,
        }

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
        binding = Binding(sku=sku, unit_weight_g=body.unit_weight_g)
        try:
            new = Bin.model_validate({**b.model_dump(), **binding.as_dict()})
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        entry = {
            "kind": "binding",
            "bin_id": bin_id,
            "installer": body.installer,
            "before": {"sku": b.sku, "unit_weight_g": b.unit_weight_g},
            "after": {"sku": new.sku, "unit_weight_g": new.unit_weight_g},
        }
        await run_file_op(update_overlay, self.data_dir, bin_id, binding=binding)
        line = await run_file_op(append_audit, self.data_dir, entry)
        await self.gw.apply_bin(new)
        return {"bin": self.gw.bin_view(bin_id), "audit": line}

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
            **_pick(e, "installer", "ts"),
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


def _normalise_gtin(code: str) -> str:
    """GTIN-14 with a verified check digit (the catalogue's rule when that module is present)."""
    try:
        from edge.retail.catalogue import normalise_gtin  # noqa: PLC0415 - optional, being written
    except ImportError:
        code = code.strip()
        if not (code.isascii() and code.isdigit() and len(code) in (8, 12, 13, 14)):
            raise HTTPException(status_code=422, detail=f"not a GTIN: {code!r}") from None
        return code.zfill(14)
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


__all__ = ["InstallerService", "PickTest", "commissioning_payload", "installer_router"]
