"""Shared fixtures: the project's example catalogue and helpers to build lane scans."""

from __future__ import annotations

from pathlib import Path

import pytest
from stdnum import ean

from edge.retail.catalogue import Catalogue, load_catalogue

PROJECT = Path(__file__).resolve().parents[3]
CATALOGUE_FILE = PROJECT / "config" / "catalogue.yaml"

COLA = "06901234567892"  # 3.00 CNY
WATER = "06902083886417"  # 2.00 CNY
NOODLES = "06920202888883"  # 4.50 CNY
APPLES = "02200001000001"  # 12.80 CNY/kg, PLU 00001
PORK = "02200003000009"  # 29.90 CNY/kg, PLU 00003


def ean13(body12: str) -> str:
    """A 12-digit body with its GS1 check digit appended."""
    return body12 + ean.calc_check_digit(body12)


def weight_label(plu: str, grams: int) -> str:
    """The EAN-13 a produce scale prints for `plu` at `grams` (layout 22 PPPPP WWWWW C)."""
    return ean13(f"22{plu}{grams:05d}")


def price_label(plu: str, fen: int) -> str:
    """The EAN-13 for `plu` at a printed price in fen (layout 23 PPPPP FFFFF C)."""
    return ean13(f"23{plu}{fen:05d}")


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return load_catalogue(CATALOGUE_FILE)
