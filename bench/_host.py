"""The machine line and load average every bench result carries (benches run as scripts: `bench/` is on path)."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def load_average() -> str:
    """1/5/15-minute load averages: other work on the machine skews every number here, so say how much."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def machine() -> str:
    """CPU model, cores and Python: the line every bench result carries."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}"
        f" ({platform.python_implementation()}); {platform.system()} {platform.release()} {platform.machine()}"
    )
