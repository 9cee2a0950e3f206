"""Optional plot: CPU per reading and delivered fraction of value changes vs load, both gateways.

matplotlib is not a project dependency; `plot()` imports it at call time and returns False when it is missing,
so the harness runs (and prints every number) without it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any


def plot(results: dict[str, Any], png: Path) -> bool:
    """Write the two-panel PNG; False (and nothing written) when matplotlib is not installed."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    series: dict[str, dict[str, list[Any]]] = {}
    for rows in results.get("levels", []):
        for r in rows:
            s = series.setdefault(r["side"], {"x": [], "cpu": [], "frac": [], "read": []})
            s["x"].append(r["level"])
            s["cpu"].append(r["cpu_ms_per_reading"])
            s["frac"].append(None if r["changes_fraction"] is None else 100 * r["changes_fraction"])
            s["read"].append(100 * r["readings_per_s"] / r["expected_per_s"] if r["expected_per_s"] else None)
    if not series:
        return False
    labels = next(iter(series.values()))["x"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {
        "peer": ("tab:red", "o", "ThingsBoard gateway 3.8.5"),
        "shelfgate": ("tab:blue", "s", "shelfgate"),
    }
    nan = float("nan")
    for side, s in series.items():
        color, marker, name = styles.get(side, ("gray", "x", side))
        where = "at broker" if side == "peer" else "at engine"
        labelled = False
        for rtu in (False, True):  # TCP levels as lines; the RTU level as its own points
            idx = [i for i, x in enumerate(s["x"]) if x.startswith("rtu") == rtu]
            if not idx:
                continue
            xs = [labels.index(s["x"][i]) for i in idx]
            line = "none" if rtu else "-"
            first = not labelled
            labelled = True

            def vals(key: str, idx: list[int] = idx, s: dict[str, list[Any]] = s) -> list[float]:
                return [s[key][i] if s[key][i] is not None else nan for i in idx]

            ax1.plot(
                xs, vals("cpu"), marker=marker, color=color, linestyle=line, label=name if first else None
            )
            ax2.plot(
                xs,
                vals("frac"),
                marker=marker,
                color=color,
                linestyle=line,
                label=f"{name}: value changes delivered" if first else None,
            )
            ax2.plot(
                xs,
                vals("read"),
                marker=marker,
                color=color,
                linestyle="none" if rtu else "--",
                alpha=0.5,
                label=f"{name}: readings delivered ({where})" if first else None,
            )
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("load level (devices × Hz; rtu = one RS-485 line over a pty)")
        ax.grid(True, alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylabel("CPU ms per delivered reading (log)")
    ax1.set_title("CPU per reading (lower is better)")
    ax2.set_ylabel("% delivered")
    ax2.set_ylim(0, 105)
    ax2.set_title("Delivered fraction (higher is better)")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=7, loc="center left")
    fig.suptitle(f"same simulator, same broker — {results.get('meta', {}).get('started', '')}", fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True
