"""SGTIN-96 decoding against the Tag Data Standard vectors (pyepc, epctagcoder), plus round-trip properties."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum import ean

from drivers.rfid.epc import (
    PARTITIONS,
    EpcError,
    ProtocolError,
    RawEpc,
    Sgtin96,
    decode_sgtin,
    decode_sgtin96,
    encode_sgtin96,
    parse_epc,
)

VECTORS_FILE = Path(__file__).resolve().parents[2] / "vectors" / "sgtin96.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
GOOD: list[dict[str, Any]] = VECTORS["vectors"]
BAD: list[dict[str, Any]] = VECTORS["negative_vectors"]


def test_vector_file_is_complete_and_cites_sources() -> None:
    assert VECTORS["count"] == len(GOOD) == 14
    assert len(BAD) == 4
    for v in GOOD + BAD:
        assert v["source"]["repo"], v["epc_hex"]
        assert len(v["source"]["commit"]) == 40, v["epc_hex"]


@pytest.mark.parametrize("vector", GOOD, ids=[v["epc_hex"] for v in GOOD])
def test_decode_sgtin_vector(vector: dict[str, Any]) -> None:
    e = vector["expected"]
    out = decode_sgtin(vector["epc_hex"])
    assert out == {
        "gtin": e["gtin14"],
        "serial": e["serial"],
        "filter": e["filter"],
        "company_prefix": e["company_prefix"],
        "item_reference": e["item_reference"],
        "tag_uri": e["tag_uri"],
    }
    tag = decode_sgtin96(vector["epc_hex"])
    assert tag.partition == e["partition"]
    assert tag.pure_identity_uri == e["pure_identity_uri"]
    assert f"(01){tag.gtin}(21){tag.serial}" == e["gs1_element_string"]
    json.dumps(out)


@pytest.mark.parametrize("vector", GOOD, ids=[v["epc_hex"] for v in GOOD])
def test_encode_sgtin_vector(vector: dict[str, Any]) -> None:
    e = vector["expected"]
    assert encode_sgtin96(e["filter"], e["company_prefix"], e["item_reference"], int(e["serial"])) == (
        vector["epc_hex"].upper()
    )


def test_filter_is_kept() -> None:
    """Same item and serial, filters 1 and 3: the decode must tell them apart (some libraries drop it)."""
    pos = decode_sgtin("3034257BF7194E4000001A85")
    pallet = decode_sgtin("3074257BF7194E4000001A85")
    assert (pos["filter"], pallet["filter"]) == (1, 3)
    assert pos["gtin"] == pallet["gtin"]
    assert pos["tag_uri"] != pallet["tag_uri"]


@pytest.mark.parametrize("vector", BAD, ids=[v["reason"] for v in BAD])
def test_negative_vectors_are_rejected_as_sgtin96(vector: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        decode_sgtin(vector["epc_hex"])


def test_non_gs1_epcs_pass_through_raw() -> None:
    assert parse_epc("f45349fb11df49fa935ab6ff") == RawEpc("F45349FB11DF49FA935AB6FF")
    sgtin198 = next(v for v in BAD if v["epc_hex"].startswith("36"))["epc_hex"]
    assert parse_epc(sgtin198) == RawEpc(sgtin198.upper())  # GS1, but not SGTIN-96: kept raw, not guessed
    assert parse_epc(b"") == RawEpc("")
    assert parse_epc("1fb41f712ac9c37ab79d618173188324001a") == RawEpc("1FB41F712AC9C37AB79D618173188324001A")


def test_malformed_sgtin_headers_are_epc_errors() -> None:
    with pytest.raises(EpcError, match="partition"):
        parse_epc("303C83F1B7DD441678901234")
    with pytest.raises(EpcError, match="bits"):
        parse_epc("3034257BF7194E4000001A")  # 88 bits
    with pytest.raises(EpcError, match="bits"):
        parse_epc("3034257BF7194E4000001A8500")
    with pytest.raises(ProtocolError, match="hex"):
        parse_epc("30285471BD5A0A56789G1234")
    with pytest.raises(ProtocolError, match="odd"):
        parse_epc("303")


def test_company_prefix_with_too_many_digits_is_rejected() -> None:
    # Partition 6: 20-bit prefix field holds up to 1 048 575, but only 6 digits (<= 999 999) are legal.
    value = (0x30 << 88) | (1 << 85) | (6 << 82) | (999_999 + 1) << 62
    with pytest.raises(EpcError, match="company prefix"):
        decode_sgtin96(value.to_bytes(12, "big").hex())


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((8, "0614141", "812345", 1), "filter"),
        ((1, "06141", "812345", 1), "prefix"),
        ((1, "0614141", "81234", 1), "item reference"),
        ((1, "061414a", "812345", 1), "digits"),
        ((1, "0614141", "812345", 1 << 38), "serial"),
    ],
)
def test_encoder_rejects_bad_fields(args: tuple[int, str, str, int], match: str) -> None:
    with pytest.raises(EpcError, match=match):
        encode_sgtin96(*args)


@st.composite
def _sgtin_fields(draw: st.DrawFn) -> tuple[int, str, str, int]:
    _m, l_digits, _n, k_digits = draw(st.sampled_from(PARTITIONS))
    digits = st.text(alphabet="0123456789", min_size=1, max_size=1)
    company = "".join(draw(st.lists(digits, min_size=l_digits, max_size=l_digits)))
    item = "".join(draw(st.lists(digits, min_size=k_digits, max_size=k_digits)))
    return draw(st.integers(0, 7)), company, item, draw(st.integers(0, (1 << 38) - 1))


@given(fields=_sgtin_fields())
def test_sgtin_encode_decode_round_trip(fields: tuple[int, str, str, int]) -> None:
    filter_value, company, item, serial = fields
    epc = encode_sgtin96(filter_value, company, item, serial)
    tag = parse_epc(epc)
    assert isinstance(tag, Sgtin96)
    assert (tag.filter, tag.company_prefix, tag.item_reference, tag.serial) == fields
    assert len(tag.gtin) == 14
    assert ean.is_valid(tag.gtin)
    assert tag.gtin[:13] == item[0] + company + item[1:]


@given(raw=st.binary(max_size=40))
def test_any_bytes_parse_or_raise_protocol_error(raw: bytes) -> None:
    try:
        identity = parse_epc(raw)
    except EpcError:
        assert raw[:1] == b"\x30"
        return
    if isinstance(identity, Sgtin96):
        assert raw[0] == 0x30
        assert len(raw) == 12
        assert encode_sgtin96(
            identity.filter, identity.company_prefix, identity.item_reference, identity.serial
        ) == (raw.hex().upper())
    else:
        assert identity.hex == raw.hex().upper()


@given(text=st.text(max_size=30))
def test_decode_sgtin_on_any_text_only_raises_protocol_error(text: str) -> None:
    with contextlib.suppress(ProtocolError):
        decode_sgtin(text)
