"""`shelfgate` — the one command: run a gateway, a hub, simulators, the demo; check and decode things.

This module is the composition root: it may import every package, and it is the only production module that
wires simulators in (for `sim` and `demo`), lazily, so `shelfgate run` never loads them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from edge import __version__
from edge.logs import setup_logging
from shelfgate import taskdump
from shelfgate.exits import EXIT_BAD_INPUT, EXIT_OK

_log = logging.getLogger("shelfgate")


def _check_config(args: argparse.Namespace) -> int:
    from edge.config import ConfigError, load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        for issue in exc.issues:
            where = f"{exc.file}:{issue.line}" if issue.line else str(exc.file)
            print(f"{where}: {issue.path or '<file>'}: {issue.message}", file=sys.stderr)
        print(f"{len(exc.issues)} error(s)", file=sys.stderr)
        return EXIT_BAD_INPUT
    s = cfg.store
    print(
        f"OK {args.file}: store {s.store_id}, {len(s.buses)} buses, {len(s.transmitters)} transmitters,"
        f" {len(s.scales)} scales, {len(s.scanners)} scanners, {len(s.rfid_readers)} RFID readers,"
        f" {len(s.ble_sensors)} BLE sensors, {len(s.cameras)} cameras, {len(s.bins)} bins, config version {cfg.version}"
    )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from edge.config import ConfigError, load_config
    from edge.remote_config import run_gateway

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT

    async def serve() -> None:
        # systemd stops a service with SIGTERM: treat it like Ctrl-C — cancel, let every task close its devices,
        # the uplink send its clean offline status and the store close — instead of dying mid-write.
        main_task = asyncio.current_task()
        assert main_task is not None  # noqa: S101 — always inside asyncio.run
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            # Not a bare Gateway(cfg).run(): the runner restarts the gateway in-process on a config pushed by HQ
            # (`cmd/config`) and rolls back one that does not come up (edge/remote_config.py).
            await run_gateway(cfg)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return EXIT_OK


def _hub(args: argparse.Namespace) -> int:
    from hub.service import main as hub_main

    return hub_main(["--config", str(args.config)])


def _sim(args: argparse.Namespace) -> int:
    from shelfgate.demo import run_sim

    return run_sim(args)


def _demo(args: argparse.Namespace) -> int:
    from shelfgate.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    p = argparse.ArgumentParser(
        prog="shelfgate", description="Edge gateway for smart shelves and store devices."
    )
    p.add_argument("--version", action="version", version=f"shelfgate {__version__}")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="text or JSON lines")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check-config", help="validate a store config; prints OK or every error with its line")
    c.add_argument("file", type=Path)
    c.set_defaults(func=_check_config)

    r = sub.add_parser("run", help="run a store gateway")
    r.add_argument("--config", type=Path, required=True)
    r.set_defaults(func=_run)

    h = sub.add_parser("hub", help="run a hub worker")
    h.add_argument("--config", type=Path, required=True)
    h.set_defaults(func=_hub)

    s = sub.add_parser("sim", help="simulate a store's Modbus transmitters (TCP and RTU over a pty)")
    s.add_argument(
        "--config", type=Path, default=Path("config/demo-store.yaml"), help="store config to mirror"
    )
    s.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    s.add_argument("--tcp-port", type=int, default=None, help="port for TCP buses (default: from config)")
    s.add_argument("--seed", type=int, default=1)
    s.set_defaults(func=_sim)

    from shelfgate.decode import add_parser as add_decode

    add_decode(sub)

    from shelfgate.discover import add_parser as add_discover

    add_discover(sub)

    from shelfgate.backup import add_parsers as add_backup
    from shelfgate.install import add_parser as add_install

    add_backup(sub)
    add_install(sub)

    from shelfgate.pki import add_parser as add_pki

    add_pki(sub)

    from shelfgate.status import add_parser as add_status

    add_status(sub)

    from shelfgate.calibrate import add_parser as add_calibrate

    add_calibrate(sub)

    from shelfgate.users import add_parser as add_users

    add_users(sub)

    d = sub.add_parser("demo", help="broker + simulated store + gateway + hub, all on this machine")
    d.add_argument("--config", type=Path, default=None, help="store config (default: config/demo-store.yaml)")
    d.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    d.add_argument(
        "--data-dir", type=Path, default=Path("var/demo"), help="where the demo keeps its databases"
    )
    d.add_argument("--gateway-port", type=int, default=8080, help="staff board/API port (0 = any free port)")
    d.add_argument("--hub-port", type=int, default=8090, help="hub API port (0 = any free port)")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--shopper-rate", type=float, default=None, help="picks per minute across the store")
    d.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    taskdump.install()  # kill -USR1 PID: every unfinished asyncio task with its stack, for a hang report
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
