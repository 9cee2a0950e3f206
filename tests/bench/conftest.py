"""Put `bench/` on the import path, as running a bench script does: the bench modules are imported as
`peer_thingsboard.*` here, the name mypy gives them (`bench/` is a folder of scripts, not a package)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
