"""`shelfgate install-service`: install the gateway as a systemd service, the way an installer would by hand.

What it does, each step printed (and only printed with `--dry-run`):

1. validates the store config exactly as `shelfgate run` will, and checks that its `data_dir` is inside the
   unit's only writable path (`/var/lib/shelfgate`; `ProtectSystem=strict` makes everything else read-only — a
   config pointing elsewhere would start and then fail on its first write);
2. writes the units from `systemd/` (gateway, backup service + 5-minute timer, and with `--hub-config` the hub
   worker) into `/etc/systemd/system/` with `ExecStart` pointing at the `shelfgate` actually installed, the store
   config to `/etc/shelfgate/store.yaml` (an existing one is kept unless `--force`), and the udev rules template;
3. creates the `shelfgate` system user in the `dialout` group (serial ports) if it does not exist;
4. `systemctl daemon-reload`, `systemctl enable --now` the gateway and the backup timer, reloads udev;
5. runs `systemd-analyze verify` on what it wrote.

`--root DIR` writes under DIR instead of `/` (packaging, tests) and then skips the user and systemctl steps.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shelfgate.exits import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK

TEMPLATE_EXEC = "/opt/shelfgate/.venv/bin/shelfgate"
"""The `shelfgate` path written in the unit files in `systemd/`; replaced by the installed one."""
STATE_DIR = Path("/var/lib/shelfgate")
GATEWAY_UNITS = ("shelfgate.service", "shelfgate-backup.service", "shelfgate-backup.timer")
HUB_UNIT = "shelfgate-hub.service"
UDEV_RULES = "99-shelfgate.rules"
ENABLE = ("shelfgate.service", "shelfgate-backup.timer")


class InstallError(Exception):
    """The installation cannot go on; the message says why and what to do."""


class InstallInputError(InstallError):
    """The installer's input (config, options) is wrong: exit code 2, like every bad-input error."""


def units_dir() -> Path:
    """The unit templates: `systemd/` beside the packages (a source checkout, the supported install)."""
    here = Path(__file__).resolve().parent.parent / "systemd"
    if (here / "shelfgate.service").is_file():
        return here
    raise InstallError(f"unit templates not found in {here} (install shelfgate from a source checkout)")


def installed_exec() -> Path:
    """The `shelfgate` console script of the running installation."""
    beside = Path(sys.executable).parent / "shelfgate"
    if beside.is_file():
        return beside
    found = shutil.which("shelfgate")
    if found:
        return Path(found)
    raise InstallError("cannot find the installed `shelfgate` command (is the venv's bin on PATH?)")


@dataclass
class Plan:
    """What an installation will do."""

    root: Path
    exec_path: Path
    files: dict[Path, str] = field(default_factory=dict)
    """Destination path (under root) → content."""
    keep: list[Path] = field(default_factory=list)
    """Existing files left alone (a store config already there)."""
    commands: list[list[str]] = field(default_factory=list)

    def describe(self) -> list[str]:
        out = [f"write {p}" for p in self.files]
        out += [f"keep {p} (exists; --force replaces it)" for p in self.keep]
        out += ["run " + " ".join(c) for c in self.commands]
        return out


def _render(template: str, exec_path: Path) -> str:
    return template.replace(TEMPLATE_EXEC, str(exec_path))


def _check_store_config(config: Path) -> tuple[str, dict[str, str]]:
    """The store config's text, and the files it names relative to itself that must travel with it (the
    product catalogue), by their relative name."""
    from edge.config import ConfigError, load_config
    from edge.yamlfile import parse_yaml, read_text

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise InstallInputError(f"the store config is not valid:\n{exc}") from exc
    beside: dict[str, str] = {}
    raw, _ = parse_yaml(read_text(config))
    named = raw.get("catalogue") if isinstance(raw, dict) else None
    if isinstance(named, str) and not Path(named).is_absolute() and cfg.store.catalogue is not None:
        if ".." in Path(named).parts:
            raise InstallInputError(
                f"{config}: catalogue: {named!r} points outside the config's folder; use a path beside the"
                " store config or an absolute one"
            )
        beside[named] = cfg.store.catalogue.read_text(encoding="utf-8")
    data_dir = Path(cfg.store.data_dir)
    if not data_dir.is_absolute() or not data_dir.resolve().is_relative_to(STATE_DIR):
        raise InstallInputError(
            f"{config}: data_dir: {cfg.store.data_dir!r} is outside {STATE_DIR}, the only path the service may"
            f" write (ProtectSystem=strict); set data_dir: {STATE_DIR}"
        )
    return config.read_text(encoding="utf-8"), beside


def plan_install(
    *,
    root: Path,
    config: Path | None,
    hub_config: Path | None = None,
    exec_path: Path | None = None,
    force: bool = False,
    enable: bool = True,
    user: str = "shelfgate",
) -> Plan:
    """Work out every file and command; touches nothing."""
    plan = Plan(root=root, exec_path=exec_path or installed_exec())
    templates = units_dir()
    system = root / "etc/systemd/system"
    for name in GATEWAY_UNITS:
        plan.files[system / name] = _render((templates / name).read_text(encoding="utf-8"), plan.exec_path)
    if hub_config is not None:
        plan.files[system / HUB_UNIT] = _render(
            (templates / HUB_UNIT).read_text(encoding="utf-8"), plan.exec_path
        )
        target = root / "etc/shelfgate/hub.yaml"
        if target.exists() and not force:
            plan.keep.append(target)
        else:
            plan.files[target] = hub_config.read_text(encoding="utf-8")
    plan.files[root / "etc/udev/rules.d" / UDEV_RULES] = (templates / UDEV_RULES).read_text(encoding="utf-8")
    store_target = root / "etc/shelfgate/store.yaml"
    if config is not None:
        text, beside = _check_store_config(config)
        if store_target.exists() and not force:
            plan.keep.append(store_target)
        else:
            plan.files[store_target] = text
            for name, content in beside.items():
                plan.files[store_target.parent / name] = content
    elif not store_target.exists():
        raise InstallInputError(f"no store config at {store_target}: pass --config FILE")
    if root == Path("/") and enable:
        plan.commands += [
            [
                *("useradd", "--system", "--user-group", "--groups", "dialout"),
                *("--home-dir", str(STATE_DIR), "--shell", "/usr/sbin/nologin", user),
            ],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", *ENABLE],
            ["udevadm", "control", "--reload-rules"],
            ["udevadm", "trigger", "--subsystem-match=tty"],
            # Remote configuration writes store.yaml(.previous) here as the service user (a temp file and a
            # rename need the directory); the files stay root-owned until a push replaces them.
            ["chgrp", user, str(root / "etc/shelfgate")],
            ["chmod", "2770", str(root / "etc/shelfgate")],
        ]
    return plan


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def apply(plan: Plan, *, user: str = "shelfgate") -> None:
    """Write the files (atomically each) and run the commands, stopping at the first failure."""
    for path, content in plan.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".shelfgate-tmp")
        tmp.write_text(content, encoding="utf-8")
        tmp.chmod(0o640 if path.suffix == ".yaml" else 0o644)
        tmp.replace(path)
    for cmd in plan.commands:
        if cmd[0] == "useradd" and _user_exists(user):
            continue
        if shutil.which(cmd[0]) is None:
            raise InstallError(
                f"`{cmd[0]}` is not available here; the files are written — run: {' '.join(cmd)}"
            )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603 — fixed argv
        if proc.returncode != 0:
            raise InstallError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")


def verify(paths: list[Path]) -> tuple[bool, str]:
    """`systemd-analyze verify` on unit files; (ok, its output)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return True, "systemd-analyze not installed: not verified"
    proc = subprocess.run([tool, "verify", *map(str, paths)], capture_output=True, text=True, check=False)  # noqa: S603
    out = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0, out


def run_install(args: argparse.Namespace) -> int:
    """The command."""
    root: Path = args.root
    try:
        plan = plan_install(
            root=root,
            config=args.config,
            hub_config=args.hub_config,
            exec_path=args.exec_path,
            force=args.force,
            enable=not args.no_enable,
            user=args.user,
        )
        for line in plan.describe():
            print(("would " if args.dry_run else "") + line)
        if args.dry_run:
            return EXIT_OK
        apply(plan, user=args.user)
    except InstallError as exc:
        print(f"install-service: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(exc, InstallInputError) else EXIT_FAILURE
    units = [p for p in plan.files if p.suffix in (".service", ".timer")]
    ok, out = verify(units)
    print(("verified: " if ok else "systemd-analyze verify FAILED:\n") + (out or "no findings"))
    if not ok:
        return EXIT_FAILURE
    if root != Path("/") or args.no_enable:
        print(
            "not enabled (--root or --no-enable): run `systemctl daemon-reload && systemctl enable --now "
            + " ".join(ENABLE)
            + "` on the target"
        )
    else:
        print("installed and started: `systemctl status shelfgate`, logs: `journalctl -u shelfgate -f`")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `install-service`."""
    p = sub.add_parser("install-service", help="install and enable the gateway's systemd units (as root)")
    p.add_argument(
        "--config", type=Path, default=None, help="store config to install as /etc/shelfgate/store.yaml"
    )
    p.add_argument("--hub-config", type=Path, default=None, help="also install a hub worker with this config")
    p.add_argument(
        "--root", type=Path, default=Path("/"), help="install under this folder instead of / (no enable)"
    )
    p.add_argument("--exec-path", type=Path, default=None, help="the shelfgate command the units run")
    p.add_argument("--user", default="shelfgate", help="service user (created if missing)")
    p.add_argument("--force", action="store_true", help="replace an existing /etc/shelfgate config")
    p.add_argument("--no-enable", action="store_true", help="write files only; no user, systemctl or udev")
    p.add_argument("--dry-run", action="store_true", help="print what would be done")
    p.set_defaults(func=run_install)
