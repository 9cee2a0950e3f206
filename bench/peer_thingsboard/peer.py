"""The peer: ThingsBoard IoT gateway 3.8.5 in its own venv, configured for the bench layout, run offline.

Installed once into `cache_dir()/venv` with the venv's own pip (PyPI only) and reused while its
`thingsboard-gateway` version matches `PEER_VERSION`; never into the project venv (it pins pymodbus 3.9.2,
the project uses 3.16). The Modbus connector pip-installs pymodbus/pyserial/pyserial-asyncio at import time
when they are missing (and force-reinstalls pymodbus if another version is present), so they are
pre-installed at the versions it wants and a run needs no network.

Running it offline needs three things, all done here (from the recipe the issue points to):

1. a stand-in for the server's `getSessionLimits` reply (`fake_tb_rpc.py`), started before the peer;
2. a `logs/` folder in its working directory (its `logs.json` writes `./logs/*.log`, and the console script
   does not create it);
3. its built-in update check (`TBUpdater` POSTs to an https address on start and hourly, with no setting to
   turn it off) pointed at a closed loopback port via `https_proxy=http://127.0.0.1:9`: the call fails
   locally, without a DNS lookup or a packet leaving the machine.

Its environment is scrubbed of `host`, `port`, `type`, `username`, `password` (the peer reads these generic
names as overrides of its config, `TBUtility.get_service_environmental_variables`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from .layout import CHANNELS, RTU_BAUD, WEIGHT_ADDRESS, Level, device_name, endpoint_of

PEER_PACKAGE: Final = "thingsboard-gateway"
PEER_VERSION: Final = "3.8.5"
PEER_RUNTIME_DEPS: Final = ("pymodbus==3.9.2", "pyserial==3.5", "pyserial-asyncio==0.6")
"""What the peer's Modbus connector would otherwise pip-install at import time (it pins pymodbus 3.9.2)."""
HERE: Final = Path(__file__).resolve().parent
CLOSED_LOOPBACK_PROXY: Final = "http://127.0.0.1:9"
"""Port 9 (discard) with nothing listening: the update check fails at once, on this machine."""
_SCRUBBED_ENV: Final = (
    "host",
    "port",
    "type",
    "username",
    "password",
    "accessToken",
    "TB_GW_HOST",
    "TB_GW_PORT",
)


def cache_dir() -> Path:
    """`$SHELFGATE_BENCH_CACHE` or `${XDG_CACHE_HOME:-~/.cache}/shelfgate-bench`, per peer version."""
    root = os.environ.get("SHELFGATE_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "shelfgate-bench"
    )
    return Path(root) / f"{PEER_PACKAGE}-{PEER_VERSION}"


def venv_dir() -> Path:
    """The peer's own virtualenv."""
    return cache_dir() / "venv"


def peer_python() -> Path:
    """The peer venv's interpreter."""
    return venv_dir() / "bin" / "python"


def installed_version() -> str | None:
    """The peer version in the cached venv, or None when there is no usable venv."""
    py = peer_python()
    if not py.exists():
        return None
    proc = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('thingsboard-gateway'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def base_python() -> str:
    """An interpreter to create the peer venv with: the one the project venv was made from."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return str(base)


def ensure_installed(*, log: Any = print) -> Path:
    """Create or reuse the peer venv; returns its `thingsboard-gateway` console script."""
    exe = venv_dir() / "bin" / "thingsboard-gateway"
    if installed_version() == PEER_VERSION and exe.exists():
        return exe
    vdir = venv_dir()
    log(f"installing {PEER_PACKAGE}=={PEER_VERSION} into {vdir} (own venv, PyPI; once)")
    if vdir.exists():
        shutil.rmtree(vdir)
    vdir.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([base_python(), "-m", "venv", str(vdir)], check=True)
    pip = [str(peer_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, f"{PEER_PACKAGE}=={PEER_VERSION}"], check=True)
    subprocess.run([*pip, *PEER_RUNTIME_DEPS], check=True)
    if installed_version() != PEER_VERSION or not exe.exists():
        raise RuntimeError(f"{PEER_PACKAGE} {PEER_VERSION} did not install into {vdir}")
    return exe


def pip_freeze() -> str:
    """The peer venv's package versions, for the results."""
    proc = subprocess.run(
        [str(peer_python()), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout


def modbus_config(level: Level, endpoints: list[tuple[str, str, int]]) -> dict[str, Any]:
    """The peer's Modbus connector config: one slave per transmitter, one `32int` tag per channel weight.

    `endpoints[n]` = (kind, host or serial path, port) of simulator endpoint n. `reportStrategy` stays the
    gateway default (`ON_RECEIVED`: every poll is sent), as in the recipe's measurements.
    """
    slaves = []
    for i in range(level.devices):
        ep, unit = endpoint_of(i, level)
        kind, host, port = endpoints[ep]
        slave: dict[str, Any] = {
            "unitId": unit,
            "deviceName": device_name(i),
            "deviceType": "shelf_scale",
            "pollPeriod": round(level.poll_interval_s * 1000),
            "byteOrder": "BIG",
            "wordOrder": "BIG",
            "retries": 3,
            "retryOnEmpty": True,
            "retryOnInvalid": True,
            "connectAttemptTimeMs": 5000,
            "connectAttemptCount": 5,
            "waitAfterFailedAttemptsMs": 30000,
            "attributes": [],
            "timeseries": [
                {
                    "tag": f"w{ch}",
                    "type": "32int",
                    "functionCode": 3,
                    "objectsCount": 2,
                    "address": WEIGHT_ADDRESS + 2 * ch,
                }
                for ch in range(CHANNELS)
            ],
            "attributeUpdates": [],
            "rpc": [],
        }
        if kind == "rtu":
            slave.update(
                {
                    "type": "serial",
                    "method": "rtu",
                    "port": host,
                    "baudrate": RTU_BAUD,
                    "bytesize": 8,
                    "parity": "N",
                    "stopbits": 1,
                    "timeout": 1,
                }
            )
        else:
            slave.update({"type": "tcp", "method": "socket", "host": host, "port": port, "timeout": 5})
        slaves.append(slave)
    return {"master": {"slaves": slaves}}


def write_config(run_dir: Path, level: Level, endpoints: list[tuple[str, str, int]], mqtt_port: int) -> Path:
    """A fresh `cfg/` (the peer writes into its config folder), `logs/` and `data/` in `run_dir`."""
    cfg = run_dir / "cfg"
    if cfg.exists():
        shutil.rmtree(cfg)
    cfg.mkdir(parents=True)
    for sub in ("logs", "data"):
        (run_dir / sub).mkdir(exist_ok=True)
    gw = json.loads((HERE / "config" / "tb_gateway.json").read_text(encoding="utf-8"))
    gw["thingsboard"]["host"] = "127.0.0.1"
    gw["thingsboard"]["port"] = mqtt_port
    gw["storage"]["data_file_path"] = "./data/"
    (cfg / "tb_gateway.json").write_text(json.dumps(gw, indent=2), encoding="utf-8")
    shutil.copy(HERE / "config" / "logs.json", cfg / "logs.json")
    (cfg / "modbus.json").write_text(json.dumps(modbus_config(level, endpoints), indent=2), encoding="utf-8")
    return cfg


def environment(cfg: Path) -> dict[str, str]:
    """The peer's environment: config dir, update check to a closed loopback port, overrides scrubbed."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update(
        {
            "TB_GW_CONFIG_DIR": f"{cfg}/",
            "https_proxy": CLOSED_LOOPBACK_PROXY,
            "HTTPS_PROXY": CLOSED_LOOPBACK_PROXY,
            "http_proxy": CLOSED_LOOPBACK_PROXY,
            "HTTP_PROXY": CLOSED_LOOPBACK_PROXY,
            "no_proxy": "",
            "NO_PROXY": "",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
