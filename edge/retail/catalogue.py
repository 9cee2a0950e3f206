"""The product catalogue: GTIN → names (zh-CN/en), price, unit weight and spread, category, variable-measure flag,
and the store's in-store (scale label) code layouts — loaded from YAML (`config/catalogue.yaml`) or from an HQ
CSV export, or from a payload the hub pushes.

Why these rules:

- **GTINs are stored as GTIN-14** (8/12/13-digit GTINs are left-padded with zeros, GS1 General Specifications
  §3.3.2), so an EAN-13 in the file, a GS1-128 scan and the wire's `SaleItem.gtin` compare equal. Every check
  digit is verified (`python-stdnum`, GS1 mod 10, §7.9.1). In a file a GTIN must be a quoted string: a YAML
  number would drop the leading zeros.
- **Prices are CNY decimal strings** (`"3.50"`, at most two places), never YAML/CSV floats — the same intake as
  the wire's `Money` (`cloud_bridge.contract`), for the same reason (binary floats lose fen). For a
  variable-measure item (`variable_measure: true`) `price` is per kg.
- **In-store codes** (GS1 prefix 20–29, "Restricted Circulation Numbers", GS1 General Specifications §2.1.11):
  their layout is set nationally or, in China, by the store's label scales (GS1 China leaves it to the user;
  `biip` knows no Chinese layout), so the catalogue declares it: a `prefix`, the number of `item_digits` (the
  PLU the scale prints), then the value (weight in g or price in fen) up to the EAN-13 check digit. E.g.
  ``22 00001 01234 C`` with `{prefix: "22", item_digits: 5, measure: weight}` is PLU 00001, 1.234 kg.
- Duplicates (GTIN, PLU) and contradictions (a PLU that no layout can carry, overlapping layout prefixes, a
  weight layout for an item sold per unit) are errors naming the key path and the line, like `edge.config`.

This module imports neither `edge.config` (which imports it to check its bins) nor `biip`/the barcode driver
(so `shelfgate check-config` stays light): a scan is anything with the `ClassifiedScan` attributes, e.g.
`drivers.barcode.protocol.ProductScan`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from stdnum import ean

from cloud_bridge.contract import CNY_FEN, Money
from edge.retail._files import Unreadable, csv_header, csv_rows, issues_from, parse_yaml, read_text
from edge.retail.errors import CatalogueError, FileIssue, UnknownItem
from edge.yamlfile import Loc, format_loc, nearest_line

WEIGHT_STEP_KG: Final = Decimal("0.001")
"""1 g: the wire's `weight_kg` resolution (GS1 AI 3103) and a retail scale's."""


def normalise_gtin(value: str) -> str:
    """GTIN-8/12/13/14 digits → GTIN-14 with a verified check digit; ValueError naming the problem."""
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or len(digits) not in (8, 12, 13, 14):
        raise ValueError(f"gtin must be 8, 12, 13 or 14 digits, got {value!r}")
    if not ean.is_valid(digits):
        raise ValueError(
            f"gtin {digits} has a wrong check digit (expected {ean.calc_check_digit(digits[:-1])})"
        )
    return digits.zfill(14)


def _gtin_field(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(  # noqa: TRY004 - pydantic reports a ValueError as a validation error
            f"gtin must be a quoted string of digits, got {type(value).__name__} {value!r}"
            " (a YAML/CSV number drops leading zeros)"
        )
    return normalise_gtin(value)


Gtin = Annotated[str, BeforeValidator(_gtin_field)]
"""A GTIN in a file: a string of 8/12/13/14 digits with a valid check digit, stored as GTIN-14."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LocalizedName(_Frozen):
    """A display name in Simplified Chinese and English (staff pages and the cashier screen pick one)."""

    zh: str = Field(min_length=1, max_length=200)
    en: str = Field(min_length=1, max_length=200)


class InStoreCode(_Frozen):
    """The layout of one family of in-store variable-measure codes (EAN-13, prefix 2x).

    ``prefix`` + ``item_digits`` (the PLU) + value (``12 − len(prefix) − item_digits`` digits) + check digit.
    The value is grams (`measure: weight`, 3 decimals of a kg) or fen (`measure: price`, 2 decimals of a CNY)
    unless `decimals` says otherwise. No price/weight check digit inside the value: Chinese label scales do not
    print one (a layout that does can count it into `item_digits`' neighbour by choosing `decimals`).
    """

    prefix: str = Field(pattern=r"^2[0-9]{0,2}$", description="leading digits of the EAN-13, 20–29 for RCNs")
    item_digits: int = Field(ge=1, le=8, description="digits of the PLU after the prefix")
    measure: Literal["weight", "price"]
    decimals: int | None = Field(default=None, ge=0, le=4)

    @property
    def value_digits(self) -> int:
        """Digits of the embedded value (between the PLU and the check digit)."""
        return 12 - len(self.prefix) - self.item_digits

    @property
    def value_decimals(self) -> int:
        """Implied decimals of the value: 3 for a weight in kg (grams), 2 for a price in CNY (fen)."""
        if self.decimals is not None:
            return self.decimals
        return 3 if self.measure == "weight" else 2

    @model_validator(mode="after")
    def _room_for_value(self) -> InStoreCode:
        if self.value_digits < 3:
            raise ValueError(
                f"prefix {self.prefix!r} + {self.item_digits} item digits leave {self.value_digits} digits"
                " for the value (an EAN-13 has 12 before its check digit; at least 3 are needed)"
            )
        return self

    def split(self, code13: str) -> tuple[str, Decimal] | None:
        """(PLU, embedded value) if `code13` (13 digits) has this layout's prefix, else None."""
        if len(code13) != 13 or not code13.startswith(self.prefix):
            return None
        start = len(self.prefix)
        plu = code13[start : start + self.item_digits]
        value = Decimal(int(code13[start + self.item_digits : 12])).scaleb(-self.value_decimals)
        return plu, value


def _positive_price(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError("price must be > 0 CNY")
    return value


class CatalogueItem(_Frozen):
    """One product. `price` is CNY per unit, or per kg when `variable_measure` is true."""

    gtin: Gtin
    name: LocalizedName
    price: Annotated[Money, AfterValidator(_positive_price)]
    unit_weight_g: float | None = Field(default=None, gt=0, description="mass of one unit (counted goods)")
    unit_weight_spread_g: float = Field(
        default=0.0, ge=0, description="standard deviation of one unit's mass"
    )
    category: str = Field(min_length=1, max_length=64)
    variable_measure: bool = Field(default=False, description="sold by weight: `price` is per kg")
    plu: str | None = Field(
        default=None, pattern=r"^[0-9]{1,8}$", description="item code printed into in-store labels"
    )
    sku: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="a store SKU that bins may name instead of the GTIN (e.g. camera-only produce bins)",
    )


class ClassifiedScan(Protocol):
    """What `Catalogue.lookup_scan` reads from a decoded product scan (`drivers.barcode.protocol.ProductScan`)."""

    @property
    def gtin(self) -> str: ...
    @property
    def net_weight_kg(self) -> Decimal | None: ...
    @property
    def price(self) -> Decimal | None: ...


@dataclass(frozen=True, slots=True)
class ScanMatch:
    """A scan resolved against the catalogue.

    `weight_kg` is a net weight carried by the code (in-store weight label, or GS1 AI 310n on a variable-measure
    item), rounded half-up to 1 g; `price_cny` a price carried by the code (in-store price label, or AI 392n),
    rounded half-up to the fen. Both None: the catalogue price applies (and a variable-measure item still
    needs the scale).
    """

    item: CatalogueItem
    code: str
    """The scanned GTIN-14 (for an in-store code: as printed, measure included)."""
    weight_kg: Decimal | None = None
    price_cny: Decimal | None = None
    source: Literal["gtin", "in_store_code"] = "gtin"


class _CatalogueData(_Frozen):
    """The file's shape, without the cross-checks (so the loaders can report those with line numbers)."""

    currency: Literal["CNY"] = Field(
        default="CNY", description="prices are CNY; no other currency is supported"
    )
    in_store_codes: list[InStoreCode] = Field(default=[])
    items: list[CatalogueItem] = Field(min_length=1)


def _problems(data: _CatalogueData) -> list[tuple[Loc, str]]:
    """Cross-item contradictions, each with its key path."""
    out: list[tuple[Loc, str]] = []
    seen_gtin: dict[str, int] = {}
    seen_plu: dict[str, int] = {}
    seen_sku: dict[str, int] = {}
    for i, item in enumerate(data.items):
        first = seen_gtin.setdefault(item.gtin, i)
        if first != i:
            out.append((("items", i, "gtin"), f"duplicate gtin {item.gtin} (first at items[{first}])"))
    gtins = {item.gtin for item in data.items}
    for i, item in enumerate(data.items):
        if item.sku is not None:
            first = seen_sku.setdefault(item.sku, i)
            if first != i:
                out.append((("items", i, "sku"), f"duplicate sku {item.sku!r} (first at items[{first}])"))
            elif item.sku in gtins or item.sku.zfill(14) in gtins:
                out.append((("items", i, "sku"), f"sku {item.sku!r} is another item's gtin"))
        if item.plu is not None:
            first = seen_plu.setdefault(item.plu, i)
            if first != i:
                out.append((("items", i, "plu"), f"duplicate plu {item.plu} (first at items[{first}])"))
            lengths = {layout.item_digits for layout in data.in_store_codes}
            if not lengths:
                out.append(
                    (("items", i, "plu"), "a plu needs an `in_store_codes` layout to be read from labels")
                )
            elif len(item.plu) not in lengths:
                out.append(
                    (
                        ("items", i, "plu"),
                        f"plu {item.plu!r} has {len(item.plu)} digits; the in-store code layouts carry"
                        f" {sorted(lengths)}",
                    )
                )
    for i, layout in enumerate(data.in_store_codes):
        for j, other in enumerate(data.in_store_codes[:i]):
            if layout.prefix.startswith(other.prefix) or other.prefix.startswith(layout.prefix):
                out.append(
                    (
                        ("in_store_codes", i, "prefix"),
                        f"prefix {layout.prefix!r} overlaps in_store_codes[{j}] prefix {other.prefix!r}",
                    )
                )
    return out


class Catalogue(_Frozen):
    """The validated catalogue with its indexes; build it with `load_catalogue` or `parse_catalogue`."""

    currency: Literal["CNY"] = "CNY"
    in_store_codes: list[InStoreCode] = Field(default=[])
    items: list[CatalogueItem] = Field(min_length=1)
    _by_gtin: dict[str, CatalogueItem] = PrivateAttr(default_factory=dict)
    _by_plu: dict[str, CatalogueItem] = PrivateAttr(default_factory=dict)
    _by_sku: dict[str, CatalogueItem] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Catalogue:
        problems = _problems(_CatalogueData.model_construct(**dict(self)))
        if problems:
            raise ValueError("; ".join(f"{format_loc(loc)}: {msg}" for loc, msg in problems))
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Build the GTIN and PLU indexes once."""
        self._by_gtin = {item.gtin: item for item in self.items}
        self._by_plu = {item.plu: item for item in self.items if item.plu is not None}
        self._by_sku = {item.sku: item for item in self.items if item.sku is not None}

    # --- queries ----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, gtin: object) -> bool:
        return isinstance(gtin, str) and self.get(gtin) is not None

    @property
    def gtins(self) -> frozenset[str]:
        """Every GTIN-14 in the catalogue."""
        return frozenset(self._by_gtin)

    @property
    def version(self) -> str:
        """12 hex digits identifying the content (what the gateway acks after a hub push)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    def get(self, gtin: str) -> CatalogueItem | None:
        """The item for a GTIN (8/12/13/14 digits) or a store `sku`, or None."""
        item = self._by_gtin.get(gtin) or self._by_sku.get(gtin)
        if item is not None or len(gtin) == 14:
            return item
        try:
            return self._by_gtin.get(normalise_gtin(gtin))
        except ValueError:
            return None

    def lookup(self, gtin: str) -> CatalogueItem:
        """The item for a GTIN or store SKU; `UnknownItem` if absent."""
        item = self.get(gtin)
        if item is None:
            raise UnknownItem(gtin)
        return item

    def lookup_plu(self, plu: str) -> CatalogueItem:
        """The item an in-store label's PLU names; `UnknownItem` if absent."""
        item = self._by_plu.get(plu)
        if item is None:
            raise UnknownItem(plu, "PLU not in the catalogue")
        return item

    def lookup_scan(self, scan: ClassifiedScan) -> ScanMatch:
        """Resolve a decoded product scan: its GTIN, else an in-store code layout; `UnknownItem` otherwise.

        Order: an exact GTIN match first (a catalogue may list a fixed in-store code as a GTIN), then the
        in-store layouts for a GTIN-13 with prefix 2x. A GS1 AI 310n weight counts only for a variable-measure
        item (on a fixed-measure one it is information, not the sold quantity); an AI 392n price is a printed
        price either way.
        """
        code = scan.gtin
        item = self.get(code)
        if item is not None:
            weight = _to_weight(scan.net_weight_kg) if item.variable_measure else None
            return ScanMatch(item, code, weight_kg=weight, price_cny=_to_price(scan.price))
        code13 = code[1:] if len(code) == 14 and code[0] == "0" else code
        if len(code13) == 13 and code13[0] == "2":
            for layout in self.in_store_codes:
                split = layout.split(code13)
                if split is None:
                    continue
                plu, value = split
                item = self._by_plu.get(plu)
                if item is None:
                    raise UnknownItem(code, f"in-store code with PLU {plu}, which is not in the catalogue")
                if value <= 0:
                    raise UnknownItem(code, f"in-store code with a zero {layout.measure}")
                if layout.measure == "weight":
                    if not item.variable_measure:
                        raise UnknownItem(code, f"weight label for {item.gtin}, which is sold per unit")
                    return ScanMatch(item, code, weight_kg=_to_weight(value), source="in_store_code")
                return ScanMatch(item, code, price_cny=_to_price(value), source="in_store_code")
        raise UnknownItem(code)


def _to_weight(value: Decimal | None) -> Decimal | None:
    if value is None:
        return None
    return value.quantize(WEIGHT_STEP_KG, rounding=ROUND_HALF_UP)


def _to_price(value: Decimal | None) -> Decimal | None:
    if value is None:
        return None
    return value.quantize(CNY_FEN, rounding=ROUND_HALF_UP)


def missing_skus(catalogue: Catalogue, skus: Iterable[str]) -> list[str]:
    """The SKUs (as written, e.g. a bin's `sku`) that the catalogue does not hold; sorted, without duplicates.

    The store config uses it to require every bin's SKU to exist (issue #6 part 1).
    """
    return sorted({sku for sku in skus if catalogue.get(sku) is None})


# --- loading -------------------------------------------------------------------------------------------------


def _build(data: Any, lines: Mapping[Loc, int], file: Path | str) -> Catalogue:
    if not isinstance(data, dict):
        raise CatalogueError(file, [FileIssue("", 1, "the catalogue must be a mapping with an `items` list")])
    try:
        parsed = _CatalogueData.model_validate(data)
    except ValidationError as exc:
        raise CatalogueError(file, issues_from(exc, lines)) from exc
    problems = _problems(parsed)
    if problems:
        raise CatalogueError(
            file, [FileIssue(format_loc(loc), nearest_line(loc, lines), m) for loc, m in problems]
        )
    return Catalogue.model_validate(parsed.model_dump())


def parse_catalogue(data: Any, *, source: str = "<payload>") -> Catalogue:
    """A catalogue from already-parsed data (a hub push: the same shape as the YAML file)."""
    return _build(data, {}, source)


def parse_catalogue_yaml(text: str, *, source: str = "<text>") -> Catalogue:
    """A catalogue from YAML text."""
    try:
        data, lines = parse_yaml(text)
    except Unreadable as exc:
        raise CatalogueError(source, exc.issues) from exc
    return _build(data, lines, source)


CSV_COLUMNS: Final = (
    "gtin",
    "name_zh",
    "name_en",
    "price",
    "unit_weight_g",
    "unit_weight_spread_g",
    "category",
    "variable_measure",
    "plu",
    "sku",
)
"""Columns of an HQ CSV export, in any order; `gtin`, `name_zh`, `name_en`, `price`, `category` are required."""
_CSV_REQUIRED: Final = ("gtin", "name_zh", "name_en", "price", "category")
_TRUE: Final = frozenset({"true", "yes", "y", "1", "是"})
_FALSE: Final = frozenset({"false", "no", "n", "0", "否", ""})


def parse_catalogue_csv(
    text: str, *, in_store_codes: Sequence[InStoreCode] = (), source: str = "<text>"
) -> Catalogue:
    """A catalogue from CSV text (an HQ export); layouts of in-store codes come from the caller.

    Unknown columns are errors (a misspelt optional column would otherwise drop its data silently). Empty cells
    are absent values. Errors name the row, its GTIN and the column, with the row's line.
    """
    header = csv_header(text)
    issues: list[FileIssue] = []
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown:
        issues.append(FileIssue("header", 1, f"unknown column(s) {unknown}; known: {list(CSV_COLUMNS)}"))
    missing = [c for c in _CSV_REQUIRED if c not in header]
    if missing:
        issues.append(FileIssue("header", 1, f"missing column(s) {missing}"))
    if issues:
        raise CatalogueError(source, issues)
    items: list[CatalogueItem] = []
    row_lines: list[int] = []
    row_names: list[str] = []
    for n, (line, cells) in enumerate(csv_rows(text), start=1):
        where = f"row {n} (gtin {cells.get('gtin') or '?'})"
        if "__extra__" in cells:
            issues.append(FileIssue(where, line, f"more cells than columns: {cells['__extra__']!r}"))
            continue
        flag = cells.get("variable_measure", "").lower()
        if flag not in _TRUE | _FALSE:
            issues.append(FileIssue(f"{where}.variable_measure", line, f"expected true/false, got {flag!r}"))
            continue
        raw: dict[str, Any] = {
            "gtin": cells["gtin"],
            "name": {"zh": cells["name_zh"], "en": cells["name_en"]},
            "price": cells["price"],
            "category": cells["category"],
            "variable_measure": flag in _TRUE,
        }
        for column in ("unit_weight_g", "unit_weight_spread_g", "plu", "sku"):
            if cells.get(column):
                raw[column] = cells[column]
        try:
            items.append(CatalogueItem.model_validate(raw))
        except ValidationError as exc:
            for issue in issues_from(exc, {}):
                column = {"name.zh": "name_zh", "name.en": "name_en"}.get(issue.path, issue.path)
                issues.append(FileIssue(f"{where}.{column}", line, issue.message))
            continue
        row_lines.append(line)
        row_names.append(where)
    if issues:
        raise CatalogueError(source, issues)
    if not items:
        raise CatalogueError(source, [FileIssue("", None, "no item rows")])
    data = _CatalogueData(in_store_codes=list(in_store_codes), items=items)
    problems = _problems(data)
    if problems:
        out = []
        for loc, msg in problems:
            if loc[0] == "items" and isinstance(loc[1], int):
                out.append(FileIssue(f"{row_names[loc[1]]}.{loc[2]}", row_lines[loc[1]], msg))
            else:
                out.append(FileIssue(format_loc(loc), None, msg))
        raise CatalogueError(source, out)
    return Catalogue.model_validate(data.model_dump())


def load_catalogue(path: str | Path, *, in_store_codes: Sequence[InStoreCode] = ()) -> Catalogue:
    """Read and validate a catalogue file: `.yaml`/`.yml`, or `.csv` (an HQ export, with `in_store_codes`).

    Raises `CatalogueError` listing every issue with its key path (or row) and line.
    """
    file = Path(path)
    try:
        text = read_text(file)
    except Unreadable as exc:
        raise CatalogueError(file, exc.issues) from exc
    suffix = file.suffix.lower()
    if suffix == ".csv":
        return parse_catalogue_csv(text, in_store_codes=in_store_codes, source=str(file))
    if suffix in (".yaml", ".yml"):
        if in_store_codes:
            raise CatalogueError(
                file, [FileIssue("", None, "a YAML catalogue declares its own in_store_codes")]
            )
        return parse_catalogue_yaml(text, source=str(file))
    raise CatalogueError(file, [FileIssue("", None, "a catalogue is a .yaml, .yml or .csv file")])


__all__ = [
    "CSV_COLUMNS",
    "Catalogue",
    "CatalogueItem",
    "ClassifiedScan",
    "Gtin",
    "InStoreCode",
    "LocalizedName",
    "ScanMatch",
    "load_catalogue",
    "missing_skus",
    "normalise_gtin",
    "parse_catalogue",
    "parse_catalogue_csv",
    "parse_catalogue_yaml",
]
