"""Shared fixtures of the stocktake/receiving wiring tests: a real `GatewayStore` on a SQLite file, the project's
example catalogue, a small store's bins, and helpers to seed book stock and read the outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from stdnum import ean

from edge import bookstock
from edge.config import Bin, LocalizedName
from edge.retail.catalogue import Catalogue, load_catalogue
from edge.store import GatewayStore

PROJECT = Path(__file__).resolve().parents[3]
CATALOGUE_FILE = PROJECT / "config" / "catalogue.yaml"

COLA = "06901234567892"  # 3.00 CNY
WATER = "06902083886417"  # 2.00 CNY
NOODLES = "06920202888883"  # 4.50 CNY
CRACKERS = "06921168509256"  # 6.80 CNY
GS = "\x1d"


def sscc(serial17: str) -> str:
    """An SSCC: 17 digits and their GS1 check digit."""
    return serial17 + ean.calc_check_digit(serial17)


def make_bin(bin_id: str, sku: str, location: str = "") -> Bin:
    """A camera-only bin (no weighing fields needed): enough for areas and SKUs."""
    return Bin(
        id=bin_id,
        sku=sku,
        name=LocalizedName(zh=bin_id, en=bin_id),
        safety_stock=2,
        max_stock=20,
        location=location,
    )


def store_bins() -> dict[str, Bin]:
    """Area A: cola, water; area B: noodles, crackers (two bins of crackers); area C: cola again."""
    bins = [
        make_bin("A01", COLA, "aisle A"),
        make_bin("A02", WATER, "aisle A"),
        make_bin("B01", NOODLES, "aisle B"),
        make_bin("B02", CRACKERS, "aisle B"),
        make_bin("B03", CRACKERS, "aisle B"),
        make_bin("C01", COLA, "end cap"),
    ]
    return {b.id: b for b in bins}


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return load_catalogue(CATALOGUE_FILE)


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[GatewayStore]:
    async with GatewayStore(tmp_path / "gateway.db") as s:
        yield s


async def seed_book(store: GatewayStore, deltas: dict[str, int], ref: str = "seed") -> None:
    """Book stock as a past adjustment left it."""

    def write(conn: Any) -> None:
        bookstock.ensure_schema(conn)
        bookstock.apply_deltas(conn, deltas, cause=bookstock.CAUSE_ADJUSTMENT, ref=ref, ts=1.0)

    await store.transact(write)


async def book(store: GatewayStore) -> dict[str, Decimal]:
    """Book stock per GTIN, as the database holds it."""

    def read(conn: Any) -> dict[str, Decimal]:
        bookstock.ensure_schema(conn)
        return bookstock.book_stock(conn)

    return await store.transact(read)


async def outbox(store: GatewayStore) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of every row waiting in the outbox, in seq order."""
    return [(row.event_type, row.data) for row in await store.peek(1000)]
