"""`shelfgate demo` as a new user runs it: a subprocess that prints its URLs and shows the whole loop.

The issue's promise: the first low-stock alert within a minute, a restock resolving it soon after, the hub
seeing both, the demo cashier's sales at the hub — and Ctrl-C (SIGINT) stopping everything the demo started.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

URL_LINE = re.compile(r"^(?P<name>[a-z0-9-]+): (?P<url>\S+)$")
SIMULATORS = {
    "sim-rtu1",
    "sim-tcp1",
    "sim-scale-lane1",
    "sim-scan-lane1",
    "sim-scan-handheld1",
    "sim-rfid-shelf-e",
    "sim-rfid-exit",
    "sim-ble-e1",
    "sim-ble-e2",
    "sim-cam-f1",
}


def _get(url: str) -> Any:
    r = httpx.get(url, timeout=5)
    r.raise_for_status()
    return r.json()


def _get_text(url: str) -> str:
    r = httpx.get(url, timeout=5)
    r.raise_for_status()
    return r.text


def test_demo_shows_alert_raised_and_resolved_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    # The demo's log goes to a file, not a pipe nobody drains: a full pipe (64 KiB of log lines) would block the
    # demo mid-write and look like a hang at Ctrl-C.
    log_path = tmp_path / "demo.log"
    log_file = log_path.open("w", encoding="utf-8")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shelfgate",
            "demo",
            "--gateway-port",
            "0",
            "--hub-port",
            "0",
            "--data-dir",
            str(tmp_path / "demo"),
            "--duration",
            "150",
        ],
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        urls: dict[str, str] = {}
        started = time.monotonic()
        while not {"gateway", "hub", "broker", *SIMULATORS} <= urls.keys():
            line = proc.stdout.readline()
            assert line, f"demo exited early: {proc.wait(5)} {log_path.read_text(encoding='utf-8')[-4000:]}"
            m = URL_LINE.match(line.strip())
            if m:
                urls[m["name"]] = m["url"]
        assert urls["broker"].startswith("mqtt://127.0.0.1:")
        # One line per simulator: serial devices on ptys, BLE sensors on the simulated air.
        serial = SIMULATORS - {"sim-tcp1", "sim-ble-e1", "sim-ble-e2", "sim-cam-f1"}
        assert all(urls[name].startswith("/dev/pts/") for name in serial), urls
        assert urls["sim-tcp1"].startswith("tcp://127.0.0.1:")
        assert urls["sim-ble-e2"] == "ble://A4:C1:38:00:E1:02"
        assert urls["sim-cam-f1"] == "synthetic://cam-f1"
        keys_file = tmp_path / "demo" / "ble-keys.yaml"
        assert keys_file.stat().st_mode & 0o777 == 0o600, "the demo's BLE secrets file is 0600"
        gateway = urls["gateway"].removesuffix("/board")
        hub = urls["hub"].removesuffix("/api/fleet")
        board = httpx.get(urls["gateway"], timeout=5)
        assert board.status_code == 200
        assert "board.js" in board.text

        # The first low-stock alert within a minute of start.
        low: dict[str, Any] | None = None
        while low is None:
            assert time.monotonic() - started < 60, "no low-stock alert within a minute"
            alerts = _get(f"{gateway}/api/alerts?active=false")
            low = next((a for a in alerts if a["kind"] == "low"), None)
            time.sleep(0.5)
        # Staff restock (the scenario's) resolves it soon after; the hub sees it resolved too.
        deadline = time.monotonic() + 60
        while True:
            states = {a["alert_id"]: a["state"] for a in _get(f"{gateway}/api/alerts?active=false")}
            hub_states = {
                a["alert_id"]: a["state"]
                for a in (_get(f"{hub}/api/stores/demo-sh-001/alerts") if _get(f"{hub}/api/fleet") else [])
            }
            if states[low["alert_id"]] == "resolved" and hub_states.get(low["alert_id"]) == "resolved":
                break
            assert time.monotonic() < deadline, (
                f"alert {low['alert_id']} not resolved: {states}, hub {hub_states}"
            )
            time.sleep(0.5)
        fleet = _get(f"{hub}/api/fleet")
        assert fleet[0]["store_id"] == "demo-sh-001"
        assert fleet[0]["online"] is True
        stock = _get(f"{gateway}/api/stock")
        assert len(stock) == 48
        weighed = [b for b in stock if b["device"] is not None]
        assert len(weighed) == 46
        assert all(b["count"] is not None for b in weighed), (
            "every weighed demo bin counted from its first stable level (BLE-bound ones too)"
        )
        camera_only = {b["bin_id"]: b for b in stock if b["device"] is None}
        assert set(camera_only) == {"F01", "F02"}
        assert all(b["count"] is None for b in camera_only.values()), "the camera sees, it does not count"

        # Every device family is there and healthy; the scenario gives the lane and the RFID zones life.
        devices = {d["device_id"]: d for d in _get(f"{gateway}/api/devices")}
        assert {d["family"] for d in devices.values()} == {
            "modbus",
            "scale",
            "scanner",
            "rfid",
            "ble",
            "camera",
        }
        assert [d for d, v in devices.items() if not v["online"]] == []
        assert devices["ble-e2"]["battery_pct"] is not None
        assert devices["ble-e2"]["errors_by_kind"]["decrypt_failures"] == 0
        assert any(s["kind"] == "product" for s in _get(f"{gateway}/api/scans?device=scan-lane1"))

        # The demo cashier rings up sales on the lane's scanner and scale; they reach the hub's sales views.
        while not (sales := _get(f"{hub}/api/sales?store=demo-sh-001")):
            assert time.monotonic() - started < 120, "no demo sale at the hub within 120 s"
            time.sleep(1.0)
        assert {(x["lane"], x["cashier"]) for x in sales} == {("lane1", "demo-lane1")}
        assert all(x["items"] and Decimal(x["total"]) > 0 for x in sales), sales
        local = _get(f"{gateway}/api/sales/{sales[-1]['transaction_id']}")["sale"]
        assert (local["total"], local["lane"]) == (sales[-1]["total"], "lane1")
        assert _get(f"{gateway}/api/lanes/lane1")["cashier"] == "demo-lane1"
        zones = {z["zone"]: z for z in _get(f"{gateway}/api/rfid/zones")}
        assert zones["shelf-e"]["kind"] == "shelf"
        assert zones["shelf-e"]["total"] > 0
        assert zones["exit-main"]["kind"] == "exit"

        # The synthetic shelf camera: reference taken at start, its facings judged; the story empties a
        # camera-only produce facing now and then, which raises an out-of-stock alert on that bin.
        camera = devices["cam-f1"]
        assert camera["family"] == "camera"
        assert camera["has_reference"] is True
        assert camera["frames"] > 0
        assert {f["roi_id"] for f in camera["facings"]} == {"r0c0", "r1c0", "r1c1"}
        assert all(f["state"] != "unknown" for f in camera["facings"]), camera["facings"]
        while not any(a["bin_id"] in {"F01", "F02"} for a in _get(f"{gateway}/api/alerts?active=false")):
            assert time.monotonic() - started < 140, "no camera alert on F01/F02 within 140 s"
            time.sleep(1.0)

        # What the hub keeps of this store (heartbeats, devices, status) holds no BLE key either (issue #5 part 7).
        hub_view = (
            httpx.get(f"{hub}/api/fleet", timeout=5).text + _get_text(f"{hub}/api/stores/demo-sh-001")
        ).lower()
        for key in re.findall(r'"[0-9A-F:]+": "([0-9a-f]{32})"', keys_file.read_text(encoding="utf-8")):
            assert key not in hub_view

        # Ctrl-C stops everything the demo started.
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # shelfgate/taskdump.py: the unfinished tasks go to the log
            time.sleep(2)
            pytest.fail(
                "demo still running 30 s after Ctrl-C:\n" + log_path.read_text(encoding="utf-8")[-8000:]
            )
        assert code == 0
        # Issue #5 part 7: a whole demo run's log (INFO, every component) never shows a secret — the BLE bind
        # key the demo generated, in any spelling.
        log_text = log_path.read_text(encoding="utf-8").lower()
        keys = re.findall(r'"[0-9A-F:]+": "([0-9a-f]{32})"', keys_file.read_text(encoding="utf-8"))
        assert keys, "the demo wrote a BLE key to check for"
        for key in keys:
            assert key not in log_text
            assert key[:16] not in log_text, "not even half of a key"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{gateway}/api/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        log_file.close()
