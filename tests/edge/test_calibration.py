"""The calibration wizard on synthetic readings, the installer overlay, the audit trail and the record."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import HTTPException

from drivers.modbus.models import Sample
from drivers.modbus.protocol import ChannelReading
from edge.calibration import (
    AUDIT_FILE,
    OVERLAY_FILE,
    Binding,
    CalibrationError,
    CalibrationWizard,
    RawSample,
    StabilityWindow,
    Step,
    append_audit,
    commissioning_record,
    read_audit,
    read_overlay,
    update_overlay,
)
from edge.config import Bin, Calibration, ConfigError, load_config
from edge.gateway import Gateway
from edge.installer import InstallerService, StartCalibration

TRUE_ZERO = 1000.0
TRUE_SPAN = 0.05
"""The simulated load cell: value = zero + grams / span (firmware_sims/layout.py `SimBin`)."""
RATE_HZ = 10.0


def make_bin(tare_g: float = 0.0) -> Bin:
    return Bin.model_validate(
        {
            "id": "A01",
            "sku": "06901234567892",
            "name": {"zh": "可乐", "en": "Cola"},
            "unit_weight_g": 350.0,
            "tare_g": tare_g,
            "safety_stock": 2,
            "max_stock": 10,
            "device": "tx1",
            "channel": 0,
        }
    )


class Plate:
    """Synthetic readings: a load in grams, Gaussian noise, the device's stable flag, a clock."""

    def __init__(self, noise_g: float = 0.5, seed: int = 3) -> None:
        self.load_g = 0.0
        self.noise_g = noise_g
        self.t = 100.0
        self.rng = random.Random(seed)

    def samples(self, n: int, *, stable: bool | None = True) -> Iterator[RawSample]:
        for _ in range(n):
            self.t += 1.0 / RATE_HZ
            grams = self.load_g + self.rng.gauss(0.0, self.noise_g)
            yield RawSample(TRUE_ZERO + grams / TRUE_SPAN, self.t, stable)


def feed_until(w: CalibrationWizard, plate: Plate, step: Step, max_samples: int = 400) -> None:
    for s in plate.samples(max_samples):
        if w.feed(s) is step:
            return
    pytest.fail(f"wizard stuck at {w.step} waiting for {step}: {w.status()}")


def test_stability_needs_a_full_window_and_rejects_motion() -> None:
    win = StabilityWindow(1.0)
    plate = Plate()
    for s in plate.samples(4):
        win.add(s)
    assert win.verdict().reason == "too few samples"
    for s in plate.samples(12):
        win.add(s)
    v = win.verdict()
    assert v.stable
    assert v.level is not None
    assert abs((v.level - TRUE_ZERO) * TRUE_SPAN) < 1.0
    assert v.sigma is not None
    win.sigma_ref = v.sigma  # what the wizard does once the empty plate is stable
    # A hand on the plate: large swings inside the window.
    for i, s in enumerate(plate.samples(12)):
        win.add(RawSample(s.value + (400.0 if i % 2 else -400.0), s.ts, None))
    assert not win.verdict().stable
    # The device's own motion flag vetoes an otherwise quiet window.
    win.clear()
    for s in plate.samples(12, stable=False):
        win.add(s)
    assert win.verdict().reason == "device motion"


def test_wizard_zero_span_check_recovers_the_load_cell() -> None:
    b = make_bin(tare_g=40.0)
    plate = Plate()
    plate.load_g = 40.0  # the tray stays on the plate
    w = CalibrationWizard(b, window_s=1.0)
    assert w.step is Step.EMPTY
    for s in plate.samples(20):
        w.feed(s)  # nothing happens before the installer confirms
    assert w.step is Step.EMPTY
    w.confirm_empty()
    feed_until(w, plate, Step.LOAD)
    with pytest.raises(CalibrationError):
        w.confirm_empty()
    w.confirm_loaded(2000.0)
    # Confirmed before the mass is on: the empty level stays stable but has not moved — keep waiting.
    for s in plate.samples(30):
        w.feed(s)
    assert w.status()["step"] == "spanning"
    plate.load_g = 40.0 + 2000.0
    feed_until(w, plate, Step.CHECKED)
    check = w.check
    assert check is not None
    assert check.ok, check
    assert abs(check.error_g) <= check.tolerance_g
    cal = w.result()
    assert cal is not None
    assert cal.span_g_per_unit == pytest.approx(TRUE_SPAN, rel=2e-3)
    # zero moved down by the tray, so the engine reads 0 g net with the tray alone
    assert cal.zero == pytest.approx(TRUE_ZERO, abs=0.5 / TRUE_SPAN)
    net = (TRUE_ZERO + 40.0 / TRUE_SPAN - cal.zero) * cal.span_g_per_unit - b.tare_g
    assert net == pytest.approx(0.0, abs=1.0)
    st = w.status()
    assert st["before"]["zero"] == 0.0
    assert st["after"]["span_g_per_unit"] == cal.span_g_per_unit
    assert st["check"]["ok"] is True


def test_a_drifting_plate_fails_the_check() -> None:
    """The load creeps after the span was taken: the re-read disagrees and the check says so."""
    plate = Plate(noise_g=0.2)
    w = CalibrationWizard(make_bin(), window_s=1.0, tolerance_pct=0.1, tolerance_g=0.5)
    w.confirm_empty()
    feed_until(w, plate, Step.LOAD)
    w.confirm_loaded(1000.0)
    plate.load_g = 1000.0
    feed_until(w, plate, Step.CHECKING)
    plate.load_g = 1010.0  # e.g. something leaning on the plate during the check
    feed_until(w, plate, Step.CHECKED)
    assert w.check is not None
    assert not w.check.ok
    assert w.check.error_g == pytest.approx(10.0, abs=1.0)
    assert w.check.error_pct == pytest.approx(1.0, abs=0.1)


def test_reversed_wiring_fails_and_bad_mass_is_refused() -> None:
    plate = Plate()
    w = CalibrationWizard(make_bin(), window_s=1.0)
    w.confirm_empty()
    feed_until(w, plate, Step.LOAD)
    with pytest.raises(CalibrationError):
        w.confirm_loaded(-5.0)
    w.confirm_loaded(500.0)
    plate.load_g = -500.0  # the reading goes down
    feed_until(w, plate, Step.FAILED)
    assert w.result() is None
    assert "wiring" in str(w.status()["prompt"])


def _store(tmp_path: Path) -> Path:
    cfg = tmp_path / "store.yaml"
    cfg.write_text(
        "store_id: s1\n"
        "data_dir: data\n"
        "buses:\n  - {id: tcp1, kind: tcp, host: 127.0.0.1, port: 5020}\n"
        "transmitters:\n  - {id: tx1, bus: tcp1, unit_id: 1, profile: wt-float32-cdab}\n"
        "bins:\n"
        "  - id: A01  # the cola plate\n"
        '    sku: "06901234567892"\n'
        "    name: {zh: 可乐, en: Cola}\n"
        "    unit_weight_g: 350\n"
        "    calibration: {zero: 0, span_g_per_unit: 1}\n"
        "    safety_stock: 2\n    max_stock: 10\n    device: tx1\n    channel: 0\n",
        encoding="utf-8",
    )
    return cfg


def test_overlay_is_merged_at_load_and_changes_the_version(tmp_path: Path) -> None:
    cfg_file = _store(tmp_path)
    original = cfg_file.read_text(encoding="utf-8")
    base = load_config(cfg_file)
    data = base.store.data_dir
    cal = Calibration(zero=999.5, span_g_per_unit=0.0501, calibrated_at="2026-11-23T10:00:00Z")
    update_overlay(data, "A01", calibration=cal)
    update_overlay(data, "A01", binding=Binding(sku="06901234567885", unit_weight_g=355.0))
    merged = load_config(cfg_file)
    b = merged.store.bins[0]
    assert b.calibration == cal
    assert (b.sku, b.unit_weight_g) == ("06901234567885", 355.0)
    assert merged.version != base.version
    assert cfg_file.read_text(encoding="utf-8") == original  # the hand-written YAML is never touched
    assert read_overlay(data)["bins"]["A01"]["calibration"]["zero"] == 999.5
    assert not list(data.glob(f".{OVERLAY_FILE}.*"))  # no temp file left behind


def test_a_bad_overlay_is_a_config_error_naming_it(tmp_path: Path) -> None:
    cfg_file = _store(tmp_path)
    data = load_config(cfg_file).store.data_dir
    data.mkdir(parents=True, exist_ok=True)
    (data / OVERLAY_FILE).write_text(
        "bins:\n  A01: {calibration: {zero: 1, span_g_per_unit: -2}}\n  Z99: {sku: x}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as exc:
        load_config(cfg_file)
    assert exc.value.file == data / OVERLAY_FILE
    text = str(exc.value)
    assert "Z99" in text
    assert "span_g_per_unit" in text


def test_audit_trail_and_commissioning_record(tmp_path: Path) -> None:
    append_audit(tmp_path, {"kind": "calibration", "bin_id": "A01", "installer": "li", "check": {"ok": True}})
    append_audit(tmp_path, {"kind": "binding", "bin_id": "A01", "installer": "wang", "after": {"sku": "x"}})
    append_audit(
        tmp_path, {"kind": "calibration", "bin_id": "A01", "installer": "li", "check": {"ok": False}}
    )
    with (tmp_path / AUDIT_FILE).open("a", encoding="utf-8") as f:
        f.write('{"kind": "pick_test", "bin_')  # torn by a power cut
    entries = read_audit(tmp_path)
    assert [e["kind"] for e in entries] == ["calibration", "binding", "calibration"]
    assert all("ts" in e for e in entries)
    rec = commissioning_record("s1", "gw1", [{"device_id": "tx1", "online": True}], entries)
    assert rec.calibrations["A01"]["check"] == {"ok": False}  # the latest wins
    assert rec.bindings["A01"]["after"] == {"sku": "x"}
    assert rec.installers == ["li", "wang"]
    assert json.loads(json.dumps(rec.as_dict()))["devices"][0]["device_id"] == "tx1"


async def _feed(gw: Gateway, plate: Plate, w: CalibrationWizard, step: Step, max_samples: int = 400) -> None:
    """Samples through the gateway's real sample path (taps, then the engine) until the wizard reaches `step`."""
    for s in plate.samples(max_samples):
        await gw._on_sample(Sample("tx1", s.ts, s.ts, (ChannelReading(0, s.value, s.device_stable),)))
        if w.step is step:
            return
    pytest.fail(f"wizard stuck at {w.step} waiting for {step}: {w.status()}")


async def test_a_failed_check_is_not_written_unless_forced(tmp_path: Path) -> None:
    """Through the installer service on a real Gateway (store open, tasks not started): 409 and no file
    until `force`; then overlay, audit (marked forced) and the live bin all change together."""
    cfg = load_config(_store(tmp_path))
    data = cfg.store.data_dir
    gw = Gateway(cfg)
    async with gw.store:
        await gw._restore()
        svc = InstallerService(gw)
        svc.start("A01", StartCalibration(installer="zhao", window_s=1.0, tolerance_pct=0.1, tolerance_g=0.5))
        w = svc.session("A01").wizard
        plate = Plate(noise_g=0.2)
        w.confirm_empty()
        await _feed(gw, plate, w, Step.LOAD)
        w.confirm_loaded(1000.0)
        plate.load_g = 1000.0
        await _feed(gw, plate, w, Step.CHECKING)
        plate.load_g = 1010.0
        await _feed(gw, plate, w, Step.CHECKED)
        assert w.check is not None
        assert not w.check.ok
        with pytest.raises(HTTPException) as exc:
            await svc.apply("A01", force=False)
        assert exc.value.status_code == 409
        assert "check failed" in str(exc.value.detail)
        assert not (data / OVERLAY_FILE).exists()
        assert not (data / AUDIT_FILE).exists()
        assert gw.bins["A01"].calibration.span_g_per_unit == 1.0
        out = await svc.apply("A01", force=True)
        assert out["step"] == "applied"
        assert gw.bins["A01"].calibration.span_g_per_unit == pytest.approx(TRUE_SPAN, rel=2e-3)
        assert gw.estimators["A01"].bin.calibration == gw.bins["A01"].calibration  # the live engine switched
        assert not gw.raw_taps
        (entry,) = read_audit(data)
        assert (entry["kind"], entry["installer"], entry["forced"], entry["check"]["ok"]) == (
            "calibration",
            "zhao",
            True,
            False,
        )
        assert read_overlay(data)["bins"]["A01"]["calibration"]["span_g_per_unit"] == pytest.approx(
            TRUE_SPAN, rel=2e-3
        )
