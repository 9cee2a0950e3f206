"""Catalogue: loading (YAML, CSV), errors with key path and line, lookups by GTIN, PLU and scan."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from stdnum import ean

from drivers.barcode.protocol import ProductScan, ScanConfig, decode_scan
from edge.retail.catalogue import (
    Catalogue,
    InStoreCode,
    load_catalogue,
    missing_skus,
    normalise_gtin,
    parse_catalogue,
    parse_catalogue_csv,
    parse_catalogue_yaml,
)
from edge.retail.errors import CatalogueError, UnknownItem

from .conftest import APPLES, CATALOGUE_FILE, COLA, PORK, PROJECT, ean13, price_label, weight_label

GOOD_YAML = """\
in_store_codes:
  - {prefix: "22", item_digits: 5, measure: weight}
items:
  - gtin: "06901234567892"
    name: {zh: 可乐, en: Cola}
    price: "3.00"
    unit_weight_g: 350
    category: beverages
  - gtin: "02200001000001"
    name: {zh: 苹果, en: Apples}
    price: "12.80"
    category: produce
    variable_measure: true
    plu: "00001"
"""


def scanned(text: str) -> ProductScan:
    scan = decode_scan(text)
    assert isinstance(scan, ProductScan)
    return scan


def issues_of(exc: pytest.ExceptionInfo[CatalogueError]) -> list[tuple[str, int | None]]:
    return [(i.path, i.line) for i in exc.value.issues]


def test_example_catalogue_covers_every_bin_of_the_demo_store(catalogue: Catalogue) -> None:
    store = yaml.safe_load((PROJECT / "config" / "demo-store.yaml").read_text(encoding="utf-8"))
    skus = [b["sku"] for b in store["bins"]]
    assert len(skus) == len(store["bins"]) > 40
    assert missing_skus(catalogue, skus) == []
    # The example also holds variable-measure produce with PLUs.
    produce = [i for i in catalogue.items if i.variable_measure]
    assert len(produce) >= 3
    assert all(i.plu for i in produce)
    # Unit weights agree with the demo store's bins.
    for b in store["bins"]:
        if "unit_weight_g" in b:
            assert catalogue.lookup(b["sku"]).unit_weight_g == b["unit_weight_g"]
        else:  # a camera-only bin names a store SKU
            assert catalogue.lookup(b["sku"]).sku == b["sku"]


def test_missing_skus_lists_each_absent_sku_once_sorted(catalogue: Catalogue) -> None:
    assert missing_skus(catalogue, [COLA, "store-sku-9", "06901234567892", "store-sku-1", "store-sku-9"]) == [
        "store-sku-1",
        "store-sku-9",
    ]


def test_lookup_accepts_short_gtins_and_prices_are_decimals(catalogue: Catalogue) -> None:
    item = catalogue.lookup("6901234567892")  # the EAN-13 as printed
    assert item.gtin == COLA
    assert item.price == Decimal("3.00")
    assert item.name.zh == "可口可乐 330毫升罐装"
    assert COLA in catalogue
    assert "not-a-gtin" not in catalogue
    with pytest.raises(UnknownItem, match="07032069804988: not in the catalogue"):
        catalogue.lookup("07032069804988")


def test_version_changes_with_content_only() -> None:
    a = parse_catalogue_yaml(GOOD_YAML)
    b = parse_catalogue_yaml("# a comment\n" + GOOD_YAML)
    c = parse_catalogue_yaml(GOOD_YAML.replace('"3.00"', '"3.10"'))
    assert a.version == b.version != c.version


def test_hub_payload_has_the_yaml_shape() -> None:
    data = yaml.safe_load(GOOD_YAML)
    assert parse_catalogue(data, source="hub") == parse_catalogue_yaml(GOOD_YAML)
    with pytest.raises(CatalogueError, match="hub: 1 error"):
        parse_catalogue({"items": []}, source="hub")


@pytest.mark.parametrize(
    ("edit", "path", "line", "message"),
    [
        ('price: "3.00"', "items[0].price", 6, "must be a decimal string"),
        ('price: "3.00"', "items[0].price", 6, "must be > 0"),
        ('"06901234567892"', "items[0].gtin", 4, "wrong check digit (expected 2)"),
        ('"06901234567892"', "items[0].gtin", 4, "quoted string of digits"),
        ("category: beverages", "items[0].category", 8, "at least 1 character"),
        ("unit_weight_g: 350", "items[0].colour", 7, "Extra inputs are not permitted"),
    ],
)
def test_field_errors_name_the_key_and_line(edit: str, path: str, line: int, message: str) -> None:
    replacement = {
        "must be a decimal string": "price: 3.0",
        "must be > 0": 'price: "0.00"',
        "wrong check digit (expected 2)": '"06901234567893"',
        "quoted string of digits": "6901234567892",
        "at least 1 character": 'category: ""',
        "Extra inputs are not permitted": "colour: red",
    }[message]
    with pytest.raises(CatalogueError) as exc:
        parse_catalogue_yaml(GOOD_YAML.replace(edit, replacement, 1), source="cat.yaml")
    assert (path, line) in issues_of(exc)
    assert message in str(exc.value)


def test_cross_checks_report_every_problem_with_its_line() -> None:
    text = """\
in_store_codes:
  - {prefix: "22", item_digits: 5, measure: weight}
  - {prefix: "2", item_digits: 6, measure: price}
items:
  - {gtin: "06901234567892", name: {zh: 甲, en: A}, price: "1.00", category: c}
  - {gtin: "6901234567892", name: {zh: 乙, en: B}, price: "1.00", category: c}
  - {gtin: "02200001000001", name: {zh: 丙, en: C}, price: "1.00", category: c, variable_measure: true, plu: "00001"}
  - {gtin: "02200002000000", name: {zh: 丁, en: D}, price: "1.00", category: c, variable_measure: true, plu: "00001"}
  - {gtin: "02200003000009", name: {zh: 戊, en: E}, price: "1.00", category: c, variable_measure: true, plu: "0003"}
"""
    with pytest.raises(CatalogueError) as exc:
        parse_catalogue_yaml(text, source="cat.yaml")
    assert issues_of(exc) == [
        ("items[1].gtin", 6),
        ("items[3].plu", 8),
        ("items[4].plu", 9),
        ("in_store_codes[1].prefix", 3),
    ]
    text = str(exc.value)
    assert "duplicate gtin 06901234567892 (first at items[0])" in text
    assert "duplicate plu 00001" in text
    assert "plu '0003' has 4 digits; the in-store code layouts carry [5, 6]" in text
    assert "prefix '2' overlaps in_store_codes[0] prefix '22'" in text


def test_yaml_syntax_and_duplicate_keys_are_reported_with_lines() -> None:
    with pytest.raises(CatalogueError) as exc:
        parse_catalogue_yaml("items:\n  - gtin: '06901234567892'\n    gtin: '06901234567892'\n")
    assert issues_of(exc) == [("", 3)]
    assert "duplicate key 'gtin'" in str(exc.value)
    with pytest.raises(CatalogueError, match="line 3: <file>: YAML: did not find expected"):
        parse_catalogue_yaml("items:\n  - [unclosed\n")
    with pytest.raises(CatalogueError, match="must be a mapping"):
        parse_catalogue_yaml("- just a list\n")


def test_in_store_layout_needs_room_for_a_value() -> None:
    with pytest.raises(ValueError, match="leave 2 digits for the value"):
        InStoreCode(prefix="22", item_digits=8, measure="weight")


def test_file_loading_by_suffix(tmp_path: Path) -> None:
    assert load_catalogue(CATALOGUE_FILE).lookup(COLA).category == "beverages"
    (tmp_path / "c.yml").write_text(GOOD_YAML, encoding="utf-8")
    assert len(load_catalogue(tmp_path / "c.yml")) == 2
    (tmp_path / "c.json").write_text("{}", encoding="utf-8")
    with pytest.raises(CatalogueError, match=r"\.yaml, \.yml or \.csv"):
        load_catalogue(tmp_path / "c.json")
    with pytest.raises(CatalogueError, match="cannot read file"):
        load_catalogue(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_bytes(b"items: \xff\n")
    with pytest.raises(CatalogueError, match="not UTF-8"):
        load_catalogue(tmp_path / "bad.yaml")


CSV_TEXT = (
    "\ufeffgtin,name_zh,name_en,price,unit_weight_g,category,variable_measure,plu\r\n"
    "06901234567892,可口可乐,Coca-Cola,3.00,350,beverages,false,\r\n"
    "\r\n"
    '02200001000001,富士苹果,"Apples, Fuji",12.80,,produce,是,00001\r\n'
)


def test_csv_import_with_layouts_from_the_caller(tmp_path: Path) -> None:
    layout = InStoreCode(prefix="22", item_digits=5, measure="weight")
    path = tmp_path / "hq.csv"
    path.write_text(CSV_TEXT, encoding="utf-8")
    cat = load_catalogue(path, in_store_codes=[layout])
    assert cat.lookup(APPLES).name.en == "Apples, Fuji"
    assert cat.lookup(APPLES).variable_measure
    assert cat.lookup(COLA).unit_weight_g == 350
    assert cat.lookup_plu("00001").gtin == APPLES


def test_csv_errors_name_row_gtin_column_and_line() -> None:
    text = (
        "gtin,name_zh,name_en,price,category,variable_measure\n"
        "06901234567892,可口可乐,Coca-Cola,3.0.0,beverages,no\n"
        "06902083886417,农夫山泉,Nongfu,2.00,beverages,maybe\n"
        "6901234567892,重复,Dup,1.00,beverages,\n"
    )
    with pytest.raises(CatalogueError) as exc:
        parse_catalogue_csv(text, source="hq.csv")
    assert issues_of(exc) == [
        ("row 1 (gtin 06901234567892).price", 2),
        ("row 2 (gtin 06902083886417).variable_measure", 3),
    ]
    with pytest.raises(CatalogueError) as exc:
        parse_catalogue_csv(text.replace("3.0.0", "3.00").replace("maybe", "yes"), source="hq.csv")
    assert issues_of(exc) == [("row 3 (gtin 6901234567892).gtin", 4)]
    assert "duplicate gtin 06901234567892" in str(exc.value)


def test_csv_header_problems() -> None:
    with pytest.raises(CatalogueError, match=r"unknown column\(s\) \['unit_weight'\]"):
        parse_catalogue_csv("gtin,name_zh,name_en,price,category,unit_weight\n")
    with pytest.raises(CatalogueError, match=r"missing column\(s\) \['category'\]"):
        parse_catalogue_csv("gtin,name_zh,name_en,price\n")
    with pytest.raises(CatalogueError, match="no item rows"):
        parse_catalogue_csv("gtin,name_zh,name_en,price,category\n")
    with pytest.raises(CatalogueError, match="more cells than columns"):
        parse_catalogue_csv("gtin,name_zh,name_en,price,category\n06901234567892,a,b,1.00,c,extra\n")


# --- scans ---------------------------------------------------------------------------------------------------


def test_lookup_scan_of_a_plain_ean(catalogue: Catalogue) -> None:
    match = catalogue.lookup_scan(scanned("]E06901234567892"))
    assert (match.item.gtin, match.weight_kg, match.price_cny, match.source) == (COLA, None, None, "gtin")


def test_lookup_scan_of_in_store_weight_and_price_labels(catalogue: Catalogue) -> None:
    weighed = catalogue.lookup_scan(scanned("]E0" + weight_label("00001", 1234)))
    assert weighed.item.gtin == APPLES
    assert weighed.weight_kg == Decimal("1.234")
    assert weighed.source == "in_store_code"
    assert weighed.code == "0" + weight_label("00001", 1234)
    priced = catalogue.lookup_scan(scanned("]E0" + price_label("00003", 2995)))
    assert (priced.item.gtin, priced.price_cny, priced.weight_kg) == (PORK, Decimal("29.95"), None)


def test_lookup_scan_refuses_unknown_plu_zero_measure_and_weight_for_counted_goods() -> None:
    cat = parse_catalogue_yaml(
        GOOD_YAML.replace(
            "items:\n",
            '  - {prefix: "25", item_digits: 5, measure: weight}\n'
            '  - {prefix: "26", item_digits: 5, measure: price}\nitems:\n'
            '  - {gtin: "02500009000004", name: {zh: 袋, en: Bag}, price: "0.50", category: x, plu: "00009"}\n',
        )
    )
    with pytest.raises(UnknownItem, match="PLU 00002, which is not in the catalogue"):
        cat.lookup_scan(scanned("]E0" + weight_label("00002", 500)))
    with pytest.raises(UnknownItem, match="zero price"):
        cat.lookup_scan(scanned("]E0" + ean13("260000900000")))
    # A zero-weight label that *is* an item's GTIN is that item, to be weighed (exact GTIN match first).
    plain = cat.lookup_scan(scanned("]E0" + ean13("220000100000")))
    assert (plain.item.gtin, plain.weight_kg, plain.source) == (APPLES, None, "gtin")
    with pytest.raises(UnknownItem, match="sold per unit"):
        cat.lookup_scan(scanned("]E0" + ean13("250000900123")))
    with pytest.raises(UnknownItem, match="not in the catalogue"):
        cat.lookup_scan(scanned("]E0" + ean13("290000100123")))  # no layout for prefix 29


def test_lookup_scan_of_gs1_weight_and_price(catalogue: Catalogue) -> None:
    # (01) apples' GTIN + (3103) 0.750 kg: a GS1 DataBar Expanded label on pre-packed produce.
    weighed = catalogue.lookup_scan(scanned("]e0" + "01" + APPLES + "3103000750"))
    assert weighed.weight_kg == Decimal("0.750")
    # A net weight on a fixed-measure item is information, not the sold quantity.
    cola = catalogue.lookup_scan(scanned("]e0" + "01" + COLA + "3103000350"))
    assert cola.weight_kg is None
    # (3922) price with 2 decimals.
    priced = catalogue.lookup_scan(scanned("]e0" + "01" + COLA + "3922000250"))
    assert priced.price_cny == Decimal("2.50")
    # Four decimals of a kg round half-up to 1 g.
    fine = catalogue.lookup_scan(scanned("]e0" + "01" + APPLES + "3104007505"))
    assert fine.weight_kg == Decimal("0.751")


def test_a_regional_rcn_scan_still_uses_the_catalogue_layout(catalogue: Catalogue) -> None:
    # With an rcn_region the driver may already extract a measure; the catalogue's own layout decides.
    scan = decode_scan("]E0" + weight_label("00001", 2000), ScanConfig(rcn_region=None))
    assert isinstance(scan, ProductScan)
    assert catalogue.lookup_scan(scan).weight_kg == Decimal("2.000")


@given(st.text(alphabet="0123456789", min_size=7, max_size=13).filter(lambda s: len(s) in (7, 11, 12, 13)))
def test_normalise_gtin_pads_to_14_and_verifies(body: str) -> None:
    gtin = body + ean.calc_check_digit(body)
    assert normalise_gtin(gtin) == gtin.zfill(14)
    wrong = gtin[:-1] + str((int(gtin[-1]) + 1) % 10)
    with pytest.raises(ValueError, match="wrong check digit"):
        normalise_gtin(wrong)


def test_store_sku_aliases_resolve_and_must_be_unique() -> None:
    cat = parse_catalogue_yaml(GOOD_YAML.replace('plu: "00001"', 'plu: "00001"\n    sku: "2100001"'))
    assert cat.lookup("2100001").gtin == APPLES
    assert missing_skus(cat, ["2100001", "2100002"]) == ["2100002"]
    with pytest.raises(CatalogueError) as exc:
        parse_catalogue_yaml(
            GOOD_YAML.replace("category: beverages", 'category: beverages\n    sku: "S1"').replace(
                'plu: "00001"', 'plu: "00001"\n    sku: "S1"'
            )
        )
    assert issues_of(exc) == [("items[1].sku", 16)]
    assert "duplicate sku 'S1' (first at items[0])" in str(exc.value)
    with pytest.raises(CatalogueError, match="sku '6901234567892' is another item's gtin"):
        parse_catalogue_yaml(GOOD_YAML.replace('plu: "00001"', 'plu: "00001"\n    sku: "6901234567892"'))
