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


def test_demo_store_has_every_device_family() -> None:
    s = load_config(DEMO).store
    (scale,) = s.scales
    assert (scale.protocol, scale.lane) == ("mtsics", "lane1")
    assert {(sc.role, sc.lane) for sc in s.scanners} == {("lane", "lane1"), ("handheld", None)}
    assert {r.antennas[0].kind for r in s.rfid_readers} == {"shelf", "exit"}
    assert sorted(b.keyed for b in s.ble_sensors) == [False, True]
    ble_ids = {b.id for b in s.ble_sensors}
    assert {b.device for b in s.bins if b.device in ble_ids} == ble_ids, "each BLE sensor weighs a bin"


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


# --- every device family ------------------------------------------------------------------------------------

FAMILIES = """\
store_id: s2
buses:
  - {id: rtu1, kind: rtu, port: /dev/ttyUSB0}
transmitters:
  - {id: tx1, bus: rtu1, unit_id: 1, profile: wt-int32-abcd}
scales:
  - {id: scale1, port: /dev/ttyUSB1, lane: lane1}
  - {id: scale2, port: /dev/ttyUSB4, protocol: nci}
scanners:
  - {id: scan1, port: /dev/ttyACM0, role: lane, lane: lane1}
  - {id: hh1, port: /dev/ttyACM1, role: handheld}
rfid_readers:
  - id: rfid1
    port: /dev/ttyUSB2
    antennas:
      - {antenna: 1, zone: shelf-a, kind: shelf}
  - id: rfid2
    port: /dev/ttyUSB3
    antennas:
      - {antenna: 1, zone: exit-1, kind: exit}
ble:
  keys_file: secrets/ble-keys.yaml
ble_sensors:
  - {id: ble1, mac: "A4:C1:38:00:00:01"}
  - {id: ble2, mac: "A4:C1:38:00:00:02", keyed: true, channels: 2}
bins:
  - {id: A01, sku: "06901234567892", name: {zh: 可乐, en: Cola}, unit_weight_g: 350, safety_stock: 4,
     max_stock: 12, device: tx1, channel: 0}
  - {id: E01, sku: "06902083886417", name: {zh: 水, en: Water}, unit_weight_g: 570, safety_stock: 2,
     max_stock: 8, device: ble2, channel: 1}
"""


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle` (where the config loader must point)."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _one_issue(tmp_path: Path, text: str) -> tuple[str, int | None, str]:
    issues = _issues(tmp_path, text)
    assert len(issues) == 1, issues
    return issues[0]


def test_every_family_loads_with_keys_file_beside_the_config(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, FAMILIES))
    s = cfg.store
    assert [d.id for d in s.scales] == ["scale1", "scale2"]
    assert s.scales[1].protocol == "nci"
    assert [(d.role, d.lane) for d in s.scanners] == [("lane", "lane1"), ("handheld", None)]
    assert [(r.antennas[0].zone, r.antennas[0].kind) for r in s.rfid_readers] == [
        ("shelf-a", "shelf"),
        ("exit-1", "exit"),
    ]
    assert s.ble.keys_file == (tmp_path / "secrets" / "ble-keys.yaml").resolve()
    assert s.bins[1].device == "ble2"


@pytest.mark.parametrize(
    ("old", "new", "path", "line_needle", "message"),
    [
        (
            "{id: hh1,",
            "{id: scale1,",
            "scanners[1].id",
            "{id: scale1, port: /dev/ttyACM1",
            "duplicate device id 'scale1' (first at scales[0])",
        ),
        (
            "id: rfid2",
            "id: ble1",
            "ble_sensors[0].id",
            "{id: ble1, mac",
            "duplicate device id 'ble1' (first at rfid_readers[1])",
        ),
        (
            "port: /dev/ttyACM1",
            "port: /dev/ttyUSB1",
            "scanners[1].port",
            "id: hh1",
            "port /dev/ttyUSB1 already used by scales[0]",
        ),
        (
            "port: /dev/ttyUSB1",
            "port: /dev/ttyUSB0",
            "scales[0].port",
            "id: scale1",
            "port /dev/ttyUSB0 already used by buses[0]",
        ),
        (
            "device: tx1",
            "device: scan1",
            "bins[0].device",
            "device: scan1",
            "device 'scan1' is a scanner; a bin is weighed by a transmitter or a BLE shelf sensor",
        ),
        ("device: tx1", "device: nope", "bins[0].device", "device: nope", "unknown device 'nope'"),
        (
            "device: ble2, channel: 1",
            "device: ble2, channel: 2",
            "bins[1].channel",
            "device: ble2",
            "channel 2 outside 0..1 of BLE sensor 'ble2' (its `channels`)",
        ),
        (
            "ble:\n  keys_file: secrets/ble-keys.yaml\n",
            "",
            "ble_sensors[1].keyed",
            "keyed: true",
            "a keyed sensor needs `ble.keys_file` (its key lives in that secrets file, never here)",
        ),
        (
            '"A4:C1:38:00:00:02"',
            '"A4:C1:38:00:00:01"',
            "ble_sensors[1].mac",
            "id: ble2",
            "duplicate BLE MAC 'A4:C1:38:00:00:01' (first at ble_sensors[0])",
        ),
        (
            "role: handheld}",
            "role: lane}",
            "scanners[1].lane",
            "id: hh1",
            "a scanner with role: lane needs `lane` (the lane's id)",
        ),
        (
            "role: handheld}",
            "role: handheld, lane: lane1}",
            "scanners[1].lane",
            "id: hh1",
            "only a role: lane scanner belongs to a lane (this is handheld)",
        ),
        (
            "role: handheld}",
            "role: lane, lane: lane1}",
            "scanners[1].lane",
            "id: hh1",
            "lane 'lane1' already has its scanner scanners[0]",
        ),
        (
            "protocol: nci}",
            "protocol: nci, lane: lane1}",
            "scales[1].lane",
            "id: scale2",
            "lane 'lane1' already has scales[0]",
        ),
        (
            "port: /dev/ttyUSB1, lane: lane1}",
            "port: /dev/ttyUSB1, lane: lane9}",
            "scales[0].lane",
            "id: scale1",
            "lane 'lane9' has no scanner (add one with role: lane, lane: lane9)",
        ),
        (
            "exit-1, kind: exit}",
            "shelf-a, kind: exit}",
            "rfid_readers[1].antennas[0].kind",
            "shelf-a, kind: exit",
            "zone 'shelf-a' is kind 'shelf' at rfid_readers[0].antennas[0], not 'exit'",
        ),
        (
            "{antenna: 1, zone: exit-1",
            "{antenna: 2, zone: exit-1",
            "rfid_readers[1].antennas[0].antenna",
            "antenna: 2",
            "an M100 module has one antenna port (1); use one reader per antenna, not 2",
        ),
    ],
)
def test_family_cross_checks_name_key_and_line(
    tmp_path: Path, *, old: str, new: str, path: str, line_needle: str, message: str
) -> None:
    assert old in FAMILIES
    text = FAMILIES.replace(old, new, 1)
    assert _one_issue(tmp_path, text) == (path, _line_of(text, line_needle), message)


def test_family_field_errors_name_key_and_line(tmp_path: Path) -> None:
    text = FAMILIES.replace('"A4:C1:38:00:00:01"', '"a4:c1:38:00:00:01"').replace(
        "role: handheld", "role: pos"
    )
    issues = {p: (line, msg) for p, line, msg in _issues(tmp_path, text)}
    assert issues["ble_sensors[0].mac"][0] == _line_of(text, "a4:c1")
    assert "should match pattern" in issues["ble_sensors[0].mac"][1]
    assert issues["scanners[1].role"][0] == _line_of(text, "role: pos")
    assert "'lane', 'handheld' or 'receiving'" in issues["scanners[1].role"][1]

    text = FAMILIES.replace("protocol: nci", "protocol: dibal")
    path, line, msg = _one_issue(tmp_path, text)
    assert (path, line) == ("scales[1].protocol", _line_of(text, "dibal"))
    assert "'mtsics' or 'nci'" in msg

    text = FAMILIES.replace(
        "      - {antenna: 1, zone: shelf-a, kind: shelf}\n",
        "      - {antenna: 1, zone: shelf-a, kind: shelf}\n      - {antenna: 1, zone: shelf-b}\n",
    )
    assert (
        "rfid_readers[0].antennas[1].antenna",
        _line_of(text, "shelf-b"),
        "antenna 1 of 'rfid1' is listed twice",
    ) in _issues(tmp_path, text)


def test_member_patterns_must_be_regular_expressions(tmp_path: Path) -> None:
    text = (
        FAMILIES.replace("role: handheld}", "role: handheld, member_patterns: ['^ok$', '^(unclosed']}")
        + "barcodes:\n  member_patterns:\n    - '[z-a]'\n"
    )
    issues = {p: (line, msg) for p, line, msg in _issues(tmp_path, text)}
    assert set(issues) == {"scanners[1].member_patterns[1]", "barcodes.member_patterns[0]"}
    assert issues["scanners[1].member_patterns[1]"][0] == _line_of(text, "(unclosed")
    assert issues["scanners[1].member_patterns[1]"][1].startswith("not a valid regular expression: ")
    assert issues["barcodes.member_patterns[0]"][0] == _line_of(text, "[z-a]")


def test_presence_windows_and_an_empty_store(tmp_path: Path) -> None:
    text = FAMILIES + "rfid_presence:\n  min_window_s: 12\n  max_window_s: 4\n"
    path, line, msg = _one_issue(tmp_path, text)
    assert (path, line) == ("rfid_presence", _line_of(text, "rfid_presence:"))
    assert msg == "min_window_s (12.0) must not exceed max_window_s (4.0)"

    path, line, msg = _one_issue(tmp_path, "store_id: empty\n")
    assert path == ""
    assert (
        msg
        == "no devices: configure at least one of transmitters, scales, scanners, rfid_readers, ble_sensors,"
        " cameras"
    )


def test_a_store_of_only_ble_sensors_is_valid(tmp_path: Path) -> None:
    text = """\
store_id: s3
ble_sensors:
  - {id: ble1, mac: "A4:C1:38:00:00:01"}
bins:
  - {id: E01, sku: "06902083886417", name: {zh: 水, en: Water}, unit_weight_g: 570, safety_stock: 2,
     max_stock: 8, device: ble1, channel: 0}
"""
    cfg = load_config(_write(tmp_path, text))
    assert cfg.store.buses == []
    assert cfg.store.bins[0].calibration.span_g_per_unit == 1.0, "BLE bins take grams as they come"


CATALOGUE = """\
currency: CNY
items:
  - gtin: "06901234567892"
    name: {zh: 可口可乐, en: Cola}
    price: "3.00"
    unit_weight_g: 350
    category: beverages
"""


def test_catalogue_is_loaded_and_every_bin_sku_must_be_in_it(tmp_path: Path) -> None:
    """Issue #6 part 1 / #7 part 3: a bin whose SKU the catalogue lacks is named at its `sku` line."""
    (tmp_path / "catalogue.yaml").write_text(CATALOGUE, encoding="utf-8")
    cfg = tmp_path / "store.yaml"
    cfg.write_text(
        GOOD.replace("store_id: s1\n", "store_id: s1\ncatalogue: catalogue.yaml\n"), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert "bins[1].sku" in text
    assert "'06901234567893'" in text
    assert "bins[0]" not in text  # A01's SKU is in the catalogue
    sku_line = next(i for i, ln in enumerate(cfg.read_text().splitlines(), 1) if "06901234567893" in ln)
    assert err.value.issues[0].line == sku_line

    cfg.write_text(
        GOOD.replace("store_id: s1\n", "store_id: s1\ncatalogue: catalogue.yaml\n").replace(
            '"06901234567893"', '"06901234567892"'
        ),
        encoding="utf-8",
    )
    loaded = load_config(cfg)
    assert loaded.catalogue is not None
    assert loaded.catalogue.lookup("06901234567892").name.en == "Cola"
    assert loaded.store.catalogue == (tmp_path / "catalogue.yaml").resolve()


def test_a_broken_or_missing_catalogue_is_reported_at_the_catalogue_key(tmp_path: Path) -> None:
    cfg = tmp_path / "store.yaml"
    cfg.write_text(GOOD.replace("store_id: s1\n", "store_id: s1\ncatalogue: nope.yaml\n"), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert [(i.path, i.line) for i in err.value.issues] == [("catalogue", 2)]
    assert "nope.yaml" in str(err.value)

    (tmp_path / "nope.yaml").write_text(CATALOGUE.replace('"3.00"', "3.5"), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert err.value.issues[0].path == "catalogue"
    assert "items[0].price" in str(err.value)
    assert "nope.yaml: line 5: items[0].price" in str(err.value)  # the catalogue file's own line is quoted


def test_demo_store_catalogue_covers_every_bin() -> None:
    loaded = load_config(DEMO)
    assert loaded.catalogue is not None
    assert all(loaded.catalogue.get(b.sku) is not None for b in loaded.store.bins)
