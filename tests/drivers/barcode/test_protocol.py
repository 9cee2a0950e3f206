"""The sans-IO barcode codec: GS1 vectors from biip's test-suite, framing vectors, and properties (STYLE.md 3)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum import ean

from drivers.barcode.protocol import (
    GS,
    LineFramer,
    MemberScan,
    ProductScan,
    ProtocolError,
    RejectReason,
    Scan,
    ScanConfig,
    Terminator,
    decode_gs1,
    decode_scan,
    decode_stream,
    encode_scan,
    line_to_text,
    split_symbology,
)

VECTORS_FILE = Path(__file__).resolve().parents[2] / "vectors" / "gs1_barcodes.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
ALL: list[dict[str, Any]] = VECTORS["vectors"]
MESSAGE_VECTORS = [v for v in ALL if v["api"].startswith("biip.GS1Message.")]
"""Element strings / HRI: what `shelfgate decode gs1` takes."""
SCAN_VECTORS = [v for v in ALL if v["api"] in ("biip.parse", "biip.Gtin.parse")]
"""Whole scanner outputs (some with AIM prefixes): what the client decodes from a line."""


def _vid(v: dict[str, Any]) -> str:
    return f"{v['source']['path'].rsplit('/', 1)[-1]}:{v['source'].get('line', 'hri')}:{v['input']!r}"


def _kwargs(v: dict[str, Any]) -> dict[str, Any]:
    """The vector's biip ParseConfig as our keyword arguments."""
    pc = v["parse_config"]
    out: dict[str, Any] = {}
    if "rcn_region" in pc:
        out["rcn_region"] = pc["rcn_region"]
    if "rcn_verify_variable_measure" in pc:
        out["rcn_verify_variable_measure"] = pc["rcn_verify_variable_measure"]
    if "separator_chars" in pc:
        out["separator_chars"] = tuple(pc["separator_chars"])
    return out


def _config(v: dict[str, Any]) -> ScanConfig:
    return ScanConfig(**_kwargs(v))


def _expected_gs1(v: dict[str, Any]) -> dict[str, Any] | None:
    """What decode_gs1 must return, derived from biip's expected element strings; None = must raise."""
    exp = v["expected"]
    if exp is None:
        return None
    out: dict[str, Any] = {}
    for es in exp["element_strings"]:
        ai, value = es["ai"], es["value"]
        if ai == "01":
            if "gtin_error" in es:
                return None
            out["gtin"] = es["gtin"]
            if "rcn_weight" in es:
                out["net_weight_kg"] = float(es["rcn_weight"])
        elif ai == "10":
            out["batch"] = value
        elif ai == "17":
            out["expiry"] = es["date"]
        elif ai == "21":
            out["serial"] = value
        elif ai.startswith("310"):
            out["net_weight_kg"] = int(value) / 10 ** int(ai[3])
        elif ai.startswith("392"):
            out["price"] = int(value) / 10 ** int(ai[3])
    out["hri"] = exp["hri"]
    return out


# --- vector file --------------------------------------------------------------------------------------------


def test_vector_file_is_complete_and_cites_sources() -> None:
    assert VECTORS["count"] == len(ALL) == 46
    assert len(MESSAGE_VECTORS) + len(SCAN_VECTORS) == len(ALL)
    for v in ALL:
        src = v["source"]
        assert src["repo"] == "jodal/biip", v["input"]
        assert src["path"].startswith("tests/"), v["input"]
        assert len(src["commit"]) == 40, v["input"]


# --- decode_gs1 (shelfgate decode gs1) ----------------------------------------------------------------------


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=[_vid(v) for v in MESSAGE_VECTORS])
def test_decode_gs1_vectors(vector: dict[str, Any]) -> None:
    expected = _expected_gs1(vector)
    if expected is None:
        with pytest.raises(ProtocolError) as info:
            decode_gs1(vector["input"], **_kwargs(vector))
        assert "\n" not in str(info.value)
        if vector["expected_error"] is None:  # biip parses it but flags the GTIN: our bad check digit
            assert info.value.reason is RejectReason.BAD_CHECK_DIGIT
        return
    assert decode_gs1(vector["input"], **_kwargs(vector)) == expected


def test_decode_gs1_covers_every_field_and_is_json_ready() -> None:
    hri = "(01)05901234123457(10)AB-12(17)261200(21)SN42(3103)001250(3922)1999"
    out = decode_gs1(hri)
    assert out == {
        "gtin": "05901234123457",
        "batch": "AB-12",
        "expiry": "2026-12-31",
        "serial": "SN42",
        "net_weight_kg": 1.25,
        "price": 19.99,
        "hri": hri,
    }
    assert json.loads(json.dumps(out)) == out
    # The same data as a scanner sends it: AIM prefix, GS after each variable-length field.
    element_string = f"]C1010590123412345710AB-12{GS}1726120021SN42{GS}310300125039221999"
    assert decode_gs1(element_string) == out


def test_decode_gs1_bare_gtin_with_aim_prefix_and_hint_without() -> None:
    assert decode_gs1("]E05901234123457") == {"gtin": "05901234123457", "hri": "(01)05901234123457"}
    with pytest.raises(ProtocolError, match=r"AIM prefix, e\.g\. \]E05901234123457"):
        decode_gs1("5901234123457")
    with pytest.raises(ProtocolError, match="empty"):
        decode_gs1("")
    with pytest.raises(ProtocolError) as info:
        decode_gs1("]E05901234123458")
    assert info.value.reason is RejectReason.BAD_CHECK_DIGIT


# --- decode_scan on whole scanner outputs -------------------------------------------------------------------


def _check_scan_vector(vector: dict[str, Any], decode: Any) -> None:
    exp = vector["expected"]
    if "gtin14" not in exp:
        with pytest.raises(ProtocolError) as info:
            decode()
        if "check digit" in exp.get("gtin_error", ""):
            assert info.value.reason is RejectReason.BAD_CHECK_DIGIT
        elif exp.get("sscc"):
            assert info.value.reason is RejectReason.NOT_A_PRODUCT
        return
    scan = decode()
    assert isinstance(scan, ProductScan)
    assert scan.gtin == exp["gtin14"]
    assert scan.raw == vector["input"]
    assert scan.net_weight_kg == (Decimal(exp["rcn_weight"]) if "rcn_weight" in exp else None)
    assert scan.price == (Decimal(exp["rcn_price"]) if "rcn_price" in exp else None)
    symbology = {
        "EAN_13": "EAN-13",
        "EAN_8": "EAN-8",
        "ITF_14": "ITF-14",
        "GS1_128": "GS1-128",
        "GS1_DATABAR": "GS1 DataBar",
    }
    if "gs1_symbology" in exp:
        assert scan.symbology == symbology[exp["gs1_symbology"]]
    for es in exp.get("element_strings", []) + exp.get("digital_link_element_strings", []):
        if es["ai"] == "10":
            assert scan.batch == es["value"]


@pytest.mark.parametrize("vector", SCAN_VECTORS, ids=[_vid(v) for v in SCAN_VECTORS])
def test_decode_scan_vectors(vector: dict[str, Any]) -> None:
    _check_scan_vector(vector, lambda: decode_scan(vector["input"], _config(vector)))


@pytest.mark.parametrize("terminator", list(Terminator))
@pytest.mark.parametrize("vector", ALL, ids=[_vid(v) for v in ALL])
def test_every_vector_through_the_framer_whole_and_byte_at_a_time(
    vector: dict[str, Any], terminator: Terminator
) -> None:
    """Framing must not change a decode: the same result in one chunk, byte by byte, and as plain text."""
    config = _config(vector)
    wire = encode_scan(vector["input"], None, terminator)

    def outcome(result: Scan | ProtocolError) -> object:
        return (type(result), result.reason) if isinstance(result, ProtocolError) else result

    whole = decode_stream(wire, config)
    framer = LineFramer()
    lines = []
    for byte in wire:
        framer.feed(bytes((byte,)))
        while (line := framer.next_line()) is not None:
            lines.append(line)
    assert lines == [vector["input"].encode()]
    try:
        direct: Scan | ProtocolError = decode_scan(vector["input"], config)
    except ProtocolError as exc:
        direct = exc
    assert [outcome(r) for r in whole] == [outcome(direct)]
    if vector in SCAN_VECTORS:
        _check_scan_vector(vector, lambda: _raise_or_return(decode_stream(wire, config)))


def _raise_or_return(results: list[Scan | ProtocolError]) -> Scan:
    assert len(results) == 1
    result = results[0]
    if isinstance(result, ProtocolError):
        raise result
    return result


def test_gs1_128_with_batch_expiry_serial_weight_price() -> None:
    line = f"]C101095011010209171726123110LOT7{GS}21XYZ{GS}3102000750392201299"
    line_bytes = line.encode()
    scan = decode_scan(line_bytes)
    assert scan == ProductScan(
        gtin="09501101020917",
        batch="LOT7",
        expiry=dt.date(2026, 12, 31),
        serial="XYZ",
        net_weight_kg=Decimal("7.50"),
        price=Decimal("12.99"),
        symbology="GS1-128",
        raw=line,
    )


@pytest.mark.parametrize(
    ("line", "symbology"),
    [("]d2010950110102091717261231", "GS1 DataMatrix"), ("]Q3010950110102091717261231", "GS1 QR")],
)
def test_2d_gs1_symbologies(line: str, symbology: str) -> None:
    scan = decode_scan(line)
    assert isinstance(scan, ProductScan)
    assert (scan.gtin, scan.expiry, scan.symbology) == ("09501101020917", dt.date(2026, 12, 31), symbology)


def test_variable_measure_in_store_codes_need_the_region() -> None:
    weight = decode_scan("]E02302148210869", ScanConfig(rcn_region="no"))
    assert isinstance(weight, ProductScan)
    assert weight.net_weight_kg == Decimal("1.086")
    price = decode_scan("]E02001234567893", ScanConfig(rcn_region="se"))
    assert isinstance(price, ProductScan)
    assert price.price == Decimal("67.89")
    plain = decode_scan("]E02302148210869")
    assert isinstance(plain, ProductScan)
    assert (plain.gtin, plain.net_weight_kg) == ("02302148210869", None)
    with pytest.raises(ProtocolError) as info:  # variable-measure check digit wrong, GTIN check digit right
        decode_scan("]E02824040005133", ScanConfig(rcn_region="de"))
    assert info.value.reason is RejectReason.BAD_CHECK_DIGIT


@pytest.mark.parametrize(
    ("line", "member_id"),
    [
        ("MBR0123456789", "MBR0123456789"),
        ("]C0MBR0123456789", "MBR0123456789"),
        ("]Q1shelfgate://member/alice-42", "alice-42"),
        ("shelfgate://member/B_7", "B_7"),
    ],
)
def test_member_codes(line: str, member_id: str) -> None:
    assert decode_scan(line.encode()) == MemberScan(member_id=member_id, raw=line)


def test_member_pattern_wins_over_a_valid_product_code() -> None:
    """A store whose cards are EAN-13s in the 99 range: a member code is never a product."""
    config = ScanConfig(member_patterns=(r"^99([0-9]{11})$",))
    card = "9912345678909"
    assert ean.is_valid(card)
    assert decode_scan("]E0" + card, config) == MemberScan(member_id="12345678909", raw="]E0" + card)
    assert isinstance(decode_scan("]E0" + card), ProductScan)
    with pytest.raises(ValueError, match="not a valid regex"):
        ScanConfig(member_patterns=("([",))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"]E05901234123458", RejectReason.BAD_CHECK_DIGIT),
        (b"5901234123458", RejectReason.BAD_CHECK_DIGIT),
        (b"]E496385075", RejectReason.BAD_CHECK_DIGIT),
        (b"]C10105901234123458", RejectReason.BAD_CHECK_DIGIT),
        (b"\xff\xfe\x00", RejectReason.NOT_TEXT),
        (b"]E0590\x071234123457", RejectReason.NOT_TEXT),
        (b"]A0HELLO", RejectReason.NOT_A_PRODUCT),
        (b"]C100373400306809981733", RejectReason.NOT_A_PRODUCT),
        (b"]E0", RejectReason.MALFORMED),
        (b"]E0ABCDEFGHIJKLM", RejectReason.MALFORMED),
        (b"hello world", RejectReason.MALFORMED),
    ],
)
def test_rejections_carry_a_reason(line: bytes, reason: RejectReason) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_scan(line)
    assert info.value.reason is reason


def test_split_symbology_and_encode_scan() -> None:
    assert split_symbology("]E05901234123457") == ("]E0", "5901234123457")
    assert split_symbology("5901234123457") == (None, "5901234123457")
    assert split_symbology("]]E0") == (None, "]]E0")
    assert encode_scan("5901234123457", "]E0", Terminator.CRLF) == b"]E05901234123457\r\n"
    assert encode_scan("x", None, Terminator.LF) == b"x\n"
    with pytest.raises(ValueError, match="AIM"):
        encode_scan("x", "E0")
    with pytest.raises(ValueError, match="CR or LF"):
        encode_scan("a\rb")
    assert line_to_text(f"01{GS}".encode()) == f"01{GS}"


# --- framer -------------------------------------------------------------------------------------------------


def _drain(framer: LineFramer) -> list[bytes | RejectReason]:
    out: list[bytes | RejectReason] = []
    while True:
        try:
            line = framer.next_line()
        except ProtocolError as exc:
            out.append(exc.reason)
            continue
        if line is None:
            return out
        out.append(line)


@pytest.mark.parametrize("terminator", [b"\r", b"\n", b"\r\n", b"\n\r"])
def test_every_proper_prefix_needs_more(terminator: bytes) -> None:
    wire = b"]C1010590123412345710AB" + GS.encode() + b"17261231" + terminator
    end = len(wire) - len(terminator)
    for cut in range(end):
        framer = LineFramer()
        framer.feed(wire[:cut])
        assert framer.next_line() is None, cut
        assert framer.pending_bytes == cut
    framer = LineFramer()
    framer.feed(wire)
    assert _drain(framer) == [wire[:end]]
    assert framer.pending_bytes == 0


def test_mixed_terminators_and_blank_lines_are_skipped() -> None:
    framer = LineFramer()
    framer.feed(b"\r\n\r\nA\rB\nC\r\n\n\nD\n\rE")
    assert _drain(framer) == [b"A", b"B", b"C", b"D"]
    assert framer.pending_bytes == 1
    assert framer.reset() == 1
    assert framer.next_line() is None


def test_overlong_line_is_reported_once_then_resyncs() -> None:
    framer = LineFramer(max_line_bytes=16)
    framer.feed(b"X" * 17)
    assert _drain(framer) == [RejectReason.TOO_LONG]
    framer.feed(b"Y" * 100)  # still the same runaway line: no second report
    assert _drain(framer) == []
    framer.feed(b"ZZ\r]E05901234123457\r")
    assert _drain(framer) == [b"]E05901234123457"]
    framer.feed(b"W" * 17 + b"\rok\r")  # an overlong line that arrives with its terminator
    assert _drain(framer) == [RejectReason.TOO_LONG, b"ok"]
    with pytest.raises(ValueError, match="positive"):
        LineFramer(0)


# --- properties ---------------------------------------------------------------------------------------------


@st.composite
def gtins(draw: st.DrawFn) -> str:
    """A random GTIN-13 or GTIN-14 with a correct check digit."""
    length = draw(st.sampled_from([13, 14]))
    body = draw(st.text(alphabet="0123456789", min_size=length - 1, max_size=length - 1))
    return body + ean.calc_check_digit(body)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(
    gtin=gtins(),
    carrier=st.sampled_from(["]E0", "]I1", "]C1", "]d2", "]Q3", "]e0", None]),
    terminator=st.sampled_from(list(Terminator)),
    cuts=st.lists(st.integers(min_value=0, max_value=64), max_size=6),
)
def test_gtin_round_trips_through_any_aim_carrier_and_chunking(
    gtin: str, carrier: str | None, terminator: Terminator, cuts: list[int]
) -> None:
    gtin14 = gtin.zfill(14)
    if carrier in ("]E0", "]I1", None):
        data = gtin if carrier != "]I1" else gtin14
        if carrier == "]E0" and len(gtin) == 14:
            data = gtin  # a 14-digit ]E0 read is still a GTIN: decode, don't crash
    else:
        data = "01" + gtin14
    wire = encode_scan(data, carrier, terminator) * 2
    framer = LineFramer()
    scans: list[Scan] = []
    for chunk in _chunks(wire, cuts):
        framer.feed(chunk)
        while (line := framer.next_line()) is not None:
            scans.append(decode_scan(line))
    assert len(scans) == 2
    for scan in scans:
        assert isinstance(scan, ProductScan)
        assert scan.gtin == gtin14
    if carrier is not None:
        assert decode_gs1((carrier or "") + data)["gtin"] == gtin14


@settings(max_examples=300)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_random_bytes_only_ever_give_scans_or_protocol_errors(data: bytes, cuts: list[int]) -> None:
    framer = LineFramer(max_line_bytes=64)
    for chunk in _chunks(data, cuts):
        framer.feed(chunk)
        while True:
            try:
                line = framer.next_line()
                if line is None:
                    break
                assert b"\r" not in line
                assert b"\n" not in line
                assert line
                decode_scan(line)
            except ProtocolError:
                continue


_SCANNERISH = st.text(alphabet=st.sampled_from("0123456789()]ECdQeI1234/:.-ab" + GS), max_size=60)


@settings(max_examples=300)
@given(text=st.one_of(_SCANNERISH, st.text(max_size=60)))
def test_random_text_only_ever_gives_results_or_protocol_errors(text: str) -> None:
    for fn in (decode_scan, decode_gs1):
        rejections: list[ProtocolError] = []
        try:
            fn(text)
        except ProtocolError as exc:
            rejections.append(exc)
        for rejection in rejections:
            assert isinstance(rejection.reason, RejectReason)
            assert str(rejection).strip(), "a rejection must say why"
