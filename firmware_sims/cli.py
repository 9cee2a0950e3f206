"""`shelfgate sim --layout FILE.json [--duration S] [--seed N]`: serve a simulated store from a shell.

The same `SimStore` the tests use as a fixture (STYLE.md rule 14). The lead's CLI builds a `SimLayout` from a
store config and calls `serve()` directly; `main()` serves a layout saved with `layout_to_json`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .layout import SimLayout, layout_from_json
from .runner import SimStore


async def serve(
    layout: SimLayout,
    duration_s: float | None = None,
    *,
    out: TextIO | None = None,
    shopper_rate_per_min: float = 6.0,
    restock_delay_s: float = 10.0,
    first_low_at_s: float | None = 15.0,
    ready: asyncio.Event | None = None,
) -> SimStore:
    """Serve `layout` for `duration_s` seconds (None = until cancelled); print `bus_id: endpoint` lines first.

    `ready` is set once the endpoints are printed (a caller starting a gateway alongside can wait on it).
    Returns the stopped store, whose `scenario.log` is the ground truth of the run.
    """
    stream = out if out is not None else sys.stdout
    async with SimStore(
        layout,
        shopper_rate_per_min=shopper_rate_per_min,
        restock_delay_s=restock_delay_s,
        first_low_at_s=first_low_at_s,
    ) as sim:
        for bus_id, endpoint in sim.endpoints.items():
            print(f"{bus_id}: {endpoint}", file=stream, flush=True)
        if ready is not None:
            ready.set()
        if duration_s is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration_s)
    return sim


def build_parser() -> argparse.ArgumentParser:
    """The `shelfgate sim` argument parser (exposed so the top-level CLI can mount it as a subcommand)."""
    parser = argparse.ArgumentParser(
        prog="shelfgate sim", description="Serve simulated Modbus weight shelves."
    )
    parser.add_argument("--layout", type=Path, required=True, help="layout JSON written by layout_to_json")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--seed", type=int, default=None, metavar="N", help="override the layout's seed")
    parser.add_argument(
        "--shopper-rate", type=float, default=6.0, metavar="PER_MIN", help="shoppers per minute"
    )
    parser.add_argument("--restock-delay", type=float, default=10.0, metavar="S", help="low → restock delay")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        layout = layout_from_json(args.layout.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"shelfgate sim: cannot read {args.layout}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"shelfgate sim: {args.layout}: {exc}", file=sys.stderr)
        return 2
    if args.seed is not None:
        layout = dataclasses.replace(layout, seed=args.seed)
    try:
        asyncio.run(
            serve(
                layout,
                args.duration,
                shopper_rate_per_min=args.shopper_rate,
                restock_delay_s=args.restock_delay,
            )
        )
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
