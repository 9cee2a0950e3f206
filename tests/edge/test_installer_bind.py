"""Binding a bin by catalogue lookup and by scan (issue #7 part 3), through `InstallerService` on a real Gateway.

The gateway's store is open and its bins restored, but its device tasks are not started: scans are published
on the gateway's live stream (`Gateway.alerts_stream`) exactly as `edge.devices.scanners` publishes them — the
seam between the scanner driver and its consumers. The whole path from a simulated scanner's pty is the
Playwright test's (tests/e2e/test_installer_page.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import HTTPException

from edge.api import create_app
from edge.calibration import AUDIT_FILE, OVERLAY_FILE, read_audit, read_overlay
from edge.config import load_config
from edge.gateway import Gateway
from edge.installer import (
    BindApply,
    BindPreview,
    InstallerService,
    Refused,
    ScanWaitStart,
    commissioning_payload,
    lookup_code,
)

HANG_GUARD_S = 20.0
COLA = "06901234567892"
SPRITE = "06902083886417"
UNKNOWN = "6920202888883"
"""A valid EAN-13 that is not in the catalogue."""

CATALOGUE = f"""\
currency: CNY
in_store_codes:
  - {{prefix: "22", item_digits: 5, measure: weight}}
items:
  - gtin: "{COLA}"
    name: {{zh: 可乐, en: Cola}}
    price: "3.00"
    unit_weight_g: 350
    unit_weight_spread_g: 2
    category: beverages
  - gtin: "{SPRITE}"
    name: {{zh: 雪碧 330毫升罐装, en: Sprite 330 ml can}}
    price: "3.20"
    unit_weight_g: 352
    unit_weight_spread_g: 3
    category: beverages
    sku: SPR-330
  - gtin: "00000000123457"
    name: {{zh: 无重量商品, en: No weight item}}
    price: "1.00"
    category: misc
  - gtin: "02200001000001"
    name: {{zh: 富士苹果, en: Fuji apples}}
    price: "12.80"
    category: produce
    variable_measure: true
    plu: "00001"
"""


def _store(tmp_path: Path, *, catalogue: bool = True) -> Path:
    cfg = tmp_path / "store.yaml"
    text = (
        "store_id: s1\n"
        "data_dir: data\n"
        "buses:\n  - {id: tcp1, kind: tcp, host: 127.0.0.1, port: 5020}\n"
        "transmitters:\n  - {id: tx1, bus: tcp1, unit_id: 1, profile: wt-float32-cdab}\n"
        "scanners:\n"
        "  - {id: hand1, port: /dev/shelfgate/hand1, role: handheld}\n"
        "  - {id: recv1, port: /dev/shelfgate/recv1, role: receiving}\n"
        "  - {id: lane-sc, port: /dev/shelfgate/lane1, role: lane, lane: lane1}\n"
        "bins:\n"
        "  - id: A01\n"
        f'    sku: "{COLA}"\n'
        "    name: {zh: 可乐, en: Cola}\n"
        "    unit_weight_g: 350\n"
        "    unit_weight_spread_g: 2\n"
        "    safety_stock: 2\n    max_stock: 10\n    device: tx1\n    channel: 0\n"
    )
    if catalogue:
        (tmp_path / "catalogue.yaml").write_text(CATALOGUE, encoding="utf-8")
        text = "catalogue: catalogue.yaml\n" + text
    cfg.write_text(text, encoding="utf-8")
    return cfg


async def _service(
    tmp_path: Path, *, catalogue: bool = True
) -> AsyncIterator[tuple[Gateway, InstallerService]]:
    gw = Gateway(load_config(_store(tmp_path, catalogue=catalogue)))
    async with gw.store:
        await gw._restore()
        yield gw, InstallerService(gw)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Gateway, InstallerService]]:
    async for pair in _service(tmp_path):
        yield pair


def publish_scan(gw: Gateway, device: str, gtin: str | None = None, **extra: Any) -> None:
    """A classified scan on the live stream, as `ScannerCoordinator` publishes it."""
    role = {"hand1": "handheld", "recv1": "receiving", "lane-sc": "lane"}[device]
    scan: dict[str, Any] = {"ts": "2026-11-23T15:00:00.000Z", "device": device, "role": role, "lane": None}
    if gtin is None:
        scan.update(kind="member", member_id="M0000000042")
    else:
        scan.update(kind="product", gtin=gtin, raw=gtin.lstrip("0"), **extra)
    gw.alerts_stream.publish({"type": "scan", "scan": scan})


async def until(svc: InstallerService, predicate: Any) -> dict[str, Any]:
    """Poll the wait's status until `predicate(status)`; a hang guard, not a timing claim."""
    async with asyncio.timeout(HANG_GUARD_S):
        while True:
            assert svc.scan_wait is not None
            status = svc.scan_wait.as_dict()
            if predicate(status):
                return status
            await asyncio.sleep(0.01)


# --- catalogue lookup ----------------------------------------------------------------------------------


async def test_lookup_by_gtin_sku_alias_and_in_store_code(
    service: tuple[Gateway, InstallerService],
) -> None:
    _, svc = service
    assert svc.catalogue is not None
    assert lookup_code(svc.catalogue, "6902083886417").item.gtin == SPRITE  # EAN-13 as printed
    assert lookup_code(svc.catalogue, SPRITE).item.gtin == SPRITE
    assert lookup_code(svc.catalogue, "SPR-330").item.gtin == SPRITE  # the store SKU alias
    label = lookup_code(svc.catalogue, "2200001012349")  # PLU 00001, 1.234 kg
    assert (label.item.gtin, label.source, str(label.weight_kg)) == (
        "02200001000001",
        "in_store_code",
        "1.234",
    )
    with pytest.raises(Refused, match="not in the catalogue"):
        lookup_code(svc.catalogue, UNKNOWN)
    with pytest.raises(HTTPException) as exc:
        lookup_code(svc.catalogue, "6902083886418")
    assert exc.value.status_code == 422
    assert "check digit" in str(exc.value.detail)
    view = svc.lookup("6902083886417")
    assert view["name"] == {"zh": "雪碧 330毫升罐装", "en": "Sprite 330 ml can"}
    assert (view["price"], view["unit_weight_g"], view["unit_weight_spread_g"]) == ("3.20", 352.0, 3.0)


async def test_catalogue_route_answers_the_item_or_404(service: tuple[Gateway, InstallerService]) -> None:
    gw, _ = service
    transport = httpx.ASGITransport(app=create_app(gw))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        ok = await client.get(f"/api/installer/catalogue/{SPRITE}")
        missing = await client.get(f"/api/installer/catalogue/{UNKNOWN}")
    assert ok.status_code == 200
    assert ok.json()["name"]["en"] == "Sprite 330 ml can"
    assert missing.status_code == 404
    assert "not in the catalogue" in missing.json()["detail"]


# --- typed preview and binding --------------------------------------------------------------------------


async def test_preview_proposes_the_catalogue_weight_and_refuses_unknown_codes(
    service: tuple[Gateway, InstallerService],
) -> None:
    _, svc = service
    p = svc.preview_binding("A01", BindPreview(code="6902083886417"))
    assert p["item"]["name"]["en"] == "Sprite 330 ml can"
    assert p["unit_weight_source"] == "catalogue"
    assert p["before"] == {"sku": COLA, "unit_weight_g": 350.0, "unit_weight_spread_g": 2.0}
    assert p["after"] == {"sku": SPRITE, "unit_weight_g": 352.0, "unit_weight_spread_g": 3.0}
    typed = svc.preview_binding("A01", BindPreview(code=SPRITE, unit_weight_g=351.0))
    assert (typed["unit_weight_source"], typed["after"]["unit_weight_g"]) == ("typed", 351.0)
    no_weight = svc.preview_binding("A01", BindPreview(gtin="00000000123457"))
    assert (no_weight["unit_weight_source"], no_weight["after"]["unit_weight_g"]) == ("bin", 350.0)
    for code, words in ((UNKNOWN, "not in the catalogue"), ("2200001012349", "sold by weight")):
        with pytest.raises(HTTPException) as exc:
            svc.preview_binding("A01", BindPreview(code=code))
        assert exc.value.status_code == 422
        assert "binding refused" in str(exc.value.detail)
        assert words in str(exc.value.detail)


async def test_bind_writes_the_catalogue_item_into_audit_overlay_and_record(
    service: tuple[Gateway, InstallerService],
) -> None:
    gw, svc = service
    data = gw.store_cfg.data_dir
    with pytest.raises(HTTPException) as exc:
        await svc.bind("A01", BindApply(sku=UNKNOWN, installer="li"))
    assert exc.value.status_code == 422
    assert "not in the catalogue" in str(exc.value.detail)
    assert not (data / AUDIT_FILE).exists()
    assert not (data / OVERLAY_FILE).exists()

    out = await svc.bind("A01", BindApply(sku="6902083886417", installer="li", source="scan:hand1"))
    assert out["item"]["gtin"] == SPRITE
    b = gw.bins["A01"]
    assert (b.sku, b.unit_weight_g, b.unit_weight_spread_g) == (SPRITE, 352.0, 3.0)
    assert gw.estimators["A01"].bin.unit_weight_g == 352.0  # the live engine counts with it
    assert read_overlay(data)["bins"]["A01"] == {
        "sku": SPRITE,
        "unit_weight_g": 352.0,
        "unit_weight_spread_g": 3.0,
        "name": {"zh": "雪碧 330毫升罐装", "en": "Sprite 330 ml can"},
    }
    assert b.name.en == "Sprite 330 ml can"  # the board names what is now on the plate
    (entry,) = read_audit(data)
    assert entry["item"] == {
        "gtin": SPRITE,
        "name": {"zh": "雪碧 330毫升罐装", "en": "Sprite 330 ml can"},
        "unit_weight_g": 352.0,
        "unit_weight_spread_g": 3.0,
    }
    record = await svc.record()
    wire = commissioning_payload(record).model_dump(mode="json", exclude_none=True)["bindings"]["A01"]
    assert wire["item"] == {
        "gtin": SPRITE,
        "name_zh": "雪碧 330毫升罐装",
        "name_en": "Sprite 330 ml can",
        "unit_weight_g": 352.0,
        "unit_weight_spread_g": 3.0,
    }
    assert wire["after"] == {"sku": SPRITE, "unit_weight_g": 352.0}  # the spread used is the item's
    assert wire["before"] == {"sku": COLA, "unit_weight_g": 350.0}
    assert wire["source"] == "scan:hand1"


async def test_without_a_catalogue_a_checked_gtin_binds_as_before(tmp_path: Path) -> None:
    async for gw, svc in _service(tmp_path, catalogue=False):
        p = svc.preview_binding("A01", BindPreview(gtin=UNKNOWN))
        assert (p["item"], p["after"]) == (None, {"sku": "0" + UNKNOWN, "unit_weight_g": 350.0})
        with pytest.raises(HTTPException):
            svc.preview_binding("A01", BindPreview(gtin="6920202888884"))  # wrong check digit
        await svc.bind("A01", BindApply(sku=UNKNOWN, installer="li"))
        assert (gw.bins["A01"].sku, gw.bins["A01"].unit_weight_spread_g) == ("0" + UNKNOWN, 2.0)
        record = await svc.record()
        wire = commissioning_payload(record).model_dump(mode="json", exclude_none=True)["bindings"]["A01"]
        assert "item" not in wire
        assert wire["after"] == {"sku": "0" + UNKNOWN, "unit_weight_g": 350.0}


# --- waiting for a scan ---------------------------------------------------------------------------------


async def test_scan_wait_takes_only_handheld_product_scans_and_refuses_unknown_ones(
    service: tuple[Gateway, InstallerService],
) -> None:
    gw, svc = service
    assert not svc.takes_scans_from("hand1")
    w = await svc.start_scan_wait("A01", ScanWaitStart())
    assert (w["state"], w["scanners"]) == ("waiting", ["hand1", "recv1"])
    assert svc.takes_scans_from("hand1")
    assert not svc.takes_scans_from("lane-sc")

    publish_scan(gw, "lane-sc", SPRITE)  # a sale at the lane: not the installer's
    publish_scan(gw, "hand1")  # a member card: not a product
    publish_scan(gw, "hand1", "0" + UNKNOWN)
    refused = await until(svc, lambda s: s["refusals"] == 1)
    assert refused["state"] == "waiting"  # the wizard keeps waiting for the right product
    assert refused["refused"]["gtin"] == "0" + UNKNOWN
    assert "binding refused" in refused["refused"]["reason"]
    assert "not in the catalogue" in refused["refused"]["reason"]

    publish_scan(gw, "recv1", SPRITE)
    done = await until(svc, lambda s: s["state"] != "waiting")
    assert done["state"] == "scanned"
    assert done["scan"]["device"] == "recv1"
    assert done["proposal"]["source"] == "scan:recv1"
    assert done["proposal"]["item"]["name"]["zh"] == "雪碧 330毫升罐装"
    assert done["proposal"]["after"] == {"sku": SPRITE, "unit_weight_g": 352.0, "unit_weight_spread_g": 3.0}
    assert done["refusals"] == 1  # the lane scan and the member card were not considered
    assert not svc.takes_scans_from("hand1")
    assert svc.scan_status("A01")["state"] == "scanned"
    assert gw.bins["A01"].sku == COLA  # nothing is bound until the installer confirms


async def test_scan_wait_for_a_chosen_scanner_cancel_and_timeout(
    service: tuple[Gateway, InstallerService],
) -> None:
    gw, svc = service
    for scanner, status in (("nope", 404), ("lane-sc", 422)):
        with pytest.raises(HTTPException) as exc:
            await svc.start_scan_wait("A01", ScanWaitStart(scanner=scanner))
        assert exc.value.status_code == status
    await svc.start_scan_wait("A01", ScanWaitStart(scanner="hand1"))
    assert not svc.takes_scans_from("recv1")
    publish_scan(gw, "recv1", SPRITE)  # not the chosen one
    cancelled = await svc.cancel_scan_wait("A01")
    assert cancelled is not None
    assert (cancelled["state"], cancelled["scan"]) == ("cancelled", None)
    assert gw.alerts_stream.subscribers == 0

    await svc.start_scan_wait("A01", ScanWaitStart(scanner="hand1", timeout_s=0.05))
    timed_out = await until(svc, lambda s: s["state"] != "waiting")
    assert timed_out["state"] == "timeout"
    with pytest.raises(HTTPException) as exc:
        svc.scan_status("B99")
    assert exc.value.status_code == 404
