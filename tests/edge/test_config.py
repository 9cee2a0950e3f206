"""Store config: the demo store loads, and every kind of mistake is named with its key path and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import ConfigError, RtuBus, TcpBus, load_config
from edge.config_doc import render

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "demo-store.yaml"

GOOD = """\
store_id: s1
buses:
  - {id: rtu1, kind: rtu, port: /dev/ttyUSB0}
  - {id: tcp1, kind: tcp, host: 127.0.0.1, port: 5020}
transmitters:
  - {id: tx1, bus: rtu1, unit_id: 1, profile: wt-int32-abcd}
  - {id: tx2, bus: tcp1, unit_id: 1, profile: wt-float32-cdab}
bins:
  - id: A01
    sku: "06901234567892"
    name: {zh: 可乐, en: Cola}
    unit_weight_g: 350
    safety_stock: 4
    max_stock: 12
    device: tx1
    channel: 0
  - id: A02
    sku: "06901234567893"
    name: {zh: 水, en: Water}
    unit_weight_g: 570
    safety_stock: 2
    max_stock: 10
    device: tx2
    channel: 3
"""


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "store.yaml"
    f.write_text(text, encoding="utf-8")
    return f


def _issues(tmp_path: Path, text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    return [(i.path, i.line, i.message) for i in info.value.issues]


def test_demo_store_meets_the_spine_layout() -> None:
    cfg = load_config(DEMO)
    s = cfg.store
    assert len(s.bins) >= 40
    assert len(s.transmitters) >= 4
    kinds = {type(b) for b in s.buses}
    assert kinds == {RtuBus, TcpBus}
    assert set(cfg.profiles) == {"wt-int32-abcd", "wt-float32-cdab"}
    assert len(cfg.version) == 12


def test_good_config_is_frozen_and_resolves_data_dir(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.store.data_dir == (tmp_path / "var").resolve()
    assert cfg.store.effective_gateway_id == "s1-gw"
    with pytest.raises(ValueError, match="frozen"):
        cfg.store.bins[0].safety_stock = 9  # type: ignore[misc]


def test_duplicates_and_contradictions_name_key_and_line(tmp_path: Path) -> None:
    text = GOOD.replace("id: A02", "id: A01").replace(
        "unit_id: 1, profile: wt-float32", "unit_id: 1, profile: wt-float32"
    )
    text = text.replace("tcp1, unit_id: 1", "rtu1, unit_id: 1")  # both transmitters now unit 1 on rtu1
    text = text.replace("safety_stock: 2", "safety_stock: 10")  # == max_stock
    issues = _issues(tmp_path, text)
    by_path = {p: (line, msg) for p, line, msg in issues}
    assert by_path["bins[1].id"][0] == 17
    assert "duplicate bin id 'A01'" in by_path["bins[1].id"][1]
    assert by_path["transmitters[1].unit_id"][0] == 7
    assert "unit id 1 already used on bus 'rtu1'" in by_path["transmitters[1].unit_id"][1]
    assert by_path["bins[1].safety_stock"] == (21, "safety_stock (10) must be below max_stock (10)")


def test_channel_clash_and_range(tmp_path: Path) -> None:
    text = GOOD.replace("device: tx2\n    channel: 3", "device: tx1\n    channel: 0")
    issues = _issues(tmp_path, text)
    assert ("bins[1].channel", 24, "channel 0 of 'tx1' already used by bins[0]") in issues
    text = GOOD.replace("channel: 3", "channel: 10")  # the float32 profile has channels 0..9
    ((path, line, msg),) = _issues(tmp_path, text)
    assert (path, line) == ("bins[1].channel", 24)
    assert "outside 0..9" in msg


def test_type_errors_unknown_keys_and_missing_profile(tmp_path: Path) -> None:
    text = GOOD.replace("unit_weight_g: 350", "unit_weight_g: -3").replace(
        "max_stock: 12", "max_stock: 12\n    colour: red"
    )
    issues = _issues(tmp_path, text)
    paths = {p: line for p, line, _ in issues}
    assert paths["bins[0].unit_weight_g"] == 12
    assert paths["bins[0].colour"] == 15
    text = GOOD.replace("profile: wt-int32-abcd", "profile: no-such-profile")
    assert _issues(tmp_path, text) == [("transmitters[0].profile", 6, "no profile file no-such-profile.yaml")]


def test_yaml_syntax_and_duplicate_keys(tmp_path: Path) -> None:
    ((_path, line, msg),) = _issues(tmp_path, GOOD.replace("  - {id: tcp1,", "  - {id: tcp1,,"))
    assert line == 4
    assert msg.startswith("YAML")
    ((_path, line, msg),) = _issues(
        tmp_path, GOOD.replace("    unit_weight_g: 350\n", "    unit_weight_g: 350\n    unit_weight_g: 351\n")
    )
    assert line == 13
    assert "duplicate key 'unit_weight_g'" in msg


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "shelfgate", "check-config", str(DEMO)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0
    assert ok.stdout.startswith("OK ")
    bad = _write(tmp_path, GOOD.replace("safety_stock: 2", "safety_stock: 10"))
    res = subprocess.run(
        [sys.executable, "-m", "shelfgate", "check-config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert f"{bad}:21: bins[1].safety_stock: safety_stock (10) must be below max_stock (10)" in res.stderr


def test_config_reference_doc_matches_the_models() -> None:
    committed = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/config.md is stale: run `python -m edge.config_doc > docs/config.md`"
