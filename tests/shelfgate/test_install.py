"""`shelfgate install-service` into a scratch root, with the real `systemd-analyze verify` judging the units."""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path

import pytest

from shelfgate.cli import main
from shelfgate.install import InstallError, installed_exec, plan_install, units_dir, verify

REPO = Path(__file__).resolve().parents[2]


def _store_config(tmp_path: Path, data_dir: str) -> Path:
    cfg_dir = tmp_path / "cfg"
    shutil.copytree(REPO / "config" / "profiles", cfg_dir / "profiles")
    shutil.copy(REPO / "config" / "catalogue.yaml", cfg_dir / "catalogue.yaml")
    text = (REPO / "config" / "demo-store.yaml").read_text(encoding="utf-8")
    text = text.replace("data_dir: ../var/demo", f"data_dir: {data_dir}")
    path = cfg_dir / "store.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # unit keys are case-sensitive
    parser.read(path, encoding="utf-8")
    return parser


def test_systemd_analyze_is_here() -> None:
    # The verify step below is the point of these tests; without the tool they would prove little.
    assert shutil.which("systemd-analyze"), "systemd-analyze (package systemd) is needed by these tests"


def test_install_into_a_root_writes_verified_units_pointing_at_this_shelfgate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _store_config(tmp_path, "/var/lib/shelfgate")
    root = tmp_path / "root"
    hub_cfg = REPO / "config" / "hub.yaml"
    code = main(["install-service", "--root", str(root), "--config", str(cfg), "--hub-config", str(hub_cfg)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verified" in out
    system = root / "etc/systemd/system"
    gw = _unit(system / "shelfgate.service")
    svc = gw["Service"]
    assert svc["Type"] == "notify"
    assert int(svc["WatchdogSec"]) > 0
    assert svc["Restart"] == "on-failure"
    assert svc["User"] == "shelfgate"
    assert svc["SupplementaryGroups"] == "dialout"
    assert svc["ProtectSystem"] == "strict"
    assert svc["ReadWritePaths"] == "/var/lib/shelfgate /etc/shelfgate"  # state + remote configuration
    assert svc["NoNewPrivileges"] == "true"
    assert svc["ExecStart"].startswith(str(installed_exec()) + " ")
    assert "/opt/shelfgate" not in (system / "shelfgate.service").read_text(encoding="utf-8")
    timer = _unit(system / "shelfgate-backup.timer")
    assert timer["Timer"]["OnUnitActiveSec"] == "5min", "recovery point ≤ 5 min"
    assert _unit(system / "shelfgate-backup.service")["Service"]["ExecStart"].endswith(
        "backup --config /etc/shelfgate/store.yaml"
    )
    assert (system / "shelfgate-hub.service").exists()
    assert (root / "etc/udev/rules.d/99-shelfgate.rules").exists()
    assert (root / "etc/shelfgate/store.yaml").read_text(encoding="utf-8") == cfg.read_text(encoding="utf-8")
    assert (root / "etc/shelfgate/store.yaml").stat().st_mode & 0o777 == 0o640
    # The catalogue the config names beside itself travels with it: the installed config must load.
    assert (root / "etc/shelfgate/catalogue.yaml").read_bytes() == (
        REPO / "config/catalogue.yaml"
    ).read_bytes()
    # The verdict of systemd itself on every unit written.
    ok, findings = verify(sorted(system.iterdir()))
    assert ok, findings


def test_an_existing_config_is_kept_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _store_config(tmp_path, "/var/lib/shelfgate")
    root = tmp_path / "root"
    target = root / "etc/shelfgate/store.yaml"
    target.parent.mkdir(parents=True)
    target.write_text("# the installer's edited config\n", encoding="utf-8")
    assert main(["install-service", "--root", str(root), "--config", str(cfg)]) == 0
    assert "keep" in capsys.readouterr().out
    assert target.read_text(encoding="utf-8") == "# the installer's edited config\n"
    assert main(["install-service", "--root", str(root), "--config", str(cfg), "--force"]) == 0
    assert target.read_text(encoding="utf-8") == cfg.read_text(encoding="utf-8")


def test_a_data_dir_the_sandbox_cannot_write_is_refused_by_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _store_config(tmp_path, "/srv/shelfgate")
    code = main(["install-service", "--root", str(tmp_path / "root"), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2
    assert "data_dir" in err
    assert "/var/lib/shelfgate" in err
    assert not (tmp_path / "root").exists(), "nothing is written when the plan is refused"


def test_an_invalid_config_is_refused_with_its_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("store_id: x\nbins: 3\n", encoding="utf-8")
    assert main(["install-service", "--root", str(tmp_path / "root"), "--config", str(bad)]) == 2
    assert "not valid" in capsys.readouterr().err


def test_dry_run_writes_nothing_and_lists_the_system_steps(tmp_path: Path) -> None:
    cfg = _store_config(tmp_path, "/var/lib/shelfgate")
    plan = plan_install(root=Path("/"), config=cfg, exec_path=Path("/usr/bin/true"))
    steps = plan.describe()
    assert "run systemctl enable --now shelfgate.service shelfgate-backup.timer" in steps
    assert any(s.startswith("run useradd --system") and "dialout" in s for s in steps)
    assert "run chmod 2770 /etc/shelfgate" in steps  # remote configuration rewrites store.yaml there
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["install-service", "--root", str(tmp_path / "r"), "--config", str(cfg), "--dry-run"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_no_config_anywhere_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="pass --config"):
        plan_install(root=tmp_path, config=None)


def test_the_repository_units_verify_as_shipped_apart_from_the_exec_path(tmp_path: Path) -> None:
    # The files in systemd/ are what installers read; keep them valid for systemd, not only our renderer.
    for unit in sorted(units_dir().glob("*.service")) + sorted(units_dir().glob("*.timer")):
        text = unit.read_text(encoding="utf-8").replace("/opt/shelfgate/.venv/bin/shelfgate", "/usr/bin/true")
        (tmp_path / unit.name).write_text(text, encoding="utf-8")
    ok, findings = verify(sorted(tmp_path.iterdir()))
    assert ok, findings
