"""SGTIN-96 EPCs (GS1 EPC Tag Data Standard 2.x §14.5.1) → GTIN-14 + serial; other EPCs pass through raw.

Layout of the 96-bit EPC bank contents::

    | header 8 | filter 3 | partition 3 | company prefix M | item reference N | serial 38 |
      0x30       0..7       0..6         M + N = 44 bits, split by the partition table

    partition  M bits / L digits   N bits / K digits      (TDS Table 14-2)
        0        40 / 12             4 / 1
        1        37 / 11             7 / 2
        2        34 / 10            10 / 3
        3        30 /  9            14 / 4
        4        27 /  8            17 / 5
        5        24 /  7            20 / 6
        6        20 /  6            24 / 7

The item reference field carries the GTIN's indicator digit first (TDS §7.3.2), so
GTIN-14 = itemref[0] + company prefix + itemref[1:] + GS1 mod-10 check digit (python-stdnum `ean`).

The filter value is kept: it says what the tag is on (1 = point-of-sale item, 2 = case, 3 = pallet …, TDS
Table 10-4), which lets a zone ignore cases in a back-room aisle; some libraries drop it.

Why non-GS1 EPCs pass through raw: retail tags are mostly SGTIN-96, but asset tags, factory-default EPCs and
other schemes are still tags that are present; dropping them would hide them from diagnostics. A tag that
*claims* SGTIN-96 (header 0x30) but breaks its rules is an `EpcError`, counted by the reader client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from stdnum import ean

from drivers.rfid.errors import EpcError, ProtocolError

__all__ = [
    "PARTITIONS",
    "SGTIN96_HEADER",
    "EpcError",
    "ProtocolError",
    "RawEpc",
    "Sgtin96",
    "decode_sgtin",
    "decode_sgtin96",
    "encode_sgtin96",
    "parse_epc",
    "sgtin_dict",
]

SGTIN96_HEADER: Final = 0x30
SGTIN96_BITS: Final = 96
SERIAL_BITS: Final = 38

PARTITIONS: Final[tuple[tuple[int, int, int, int], ...]] = (
    (40, 12, 4, 1),
    (37, 11, 7, 2),
    (34, 10, 10, 3),
    (30, 9, 14, 4),
    (27, 8, 17, 5),
    (24, 7, 20, 6),
    (20, 6, 24, 7),
)
"""(company prefix bits, digits, item reference bits, digits) per partition value, TDS Table 14-2."""
_PARTITION_BY_PREFIX_DIGITS: Final = {digits: p for p, (_m, digits, _n, _k) in enumerate(PARTITIONS)}


@dataclass(frozen=True, slots=True)
class Sgtin96:
    """A decoded SGTIN-96. Digit strings keep their leading zeros: they are part of the GS1 keys."""

    filter: int
    partition: int
    company_prefix: str
    item_reference: str
    """Indicator digit first, as in the tag URI."""
    serial: int

    @property
    def gtin(self) -> str:
        """GTIN-14 with its check digit."""
        body = self.item_reference[0] + self.company_prefix + self.item_reference[1:]
        return body + ean.calc_check_digit(body)

    @property
    def tag_uri(self) -> str:
        """`urn:epc:tag:sgtin-96:F.CCC.III.SSS` (TDS §12.3), keeps the filter."""
        return f"urn:epc:tag:sgtin-96:{self.filter}.{self.company_prefix}.{self.item_reference}.{self.serial}"

    @property
    def pure_identity_uri(self) -> str:
        """`urn:epc:id:sgtin:CCC.III.SSS` (TDS §6.3.1), the identity without the filter."""
        return f"urn:epc:id:sgtin:{self.company_prefix}.{self.item_reference}.{self.serial}"


@dataclass(frozen=True, slots=True)
class RawEpc:
    """An EPC of another scheme (or none), kept as upper-case hex."""

    hex: str


def _to_bytes(epc: bytes | str) -> bytes:
    if isinstance(epc, bytes):
        return epc
    text = epc.strip()
    if len(text) % 2:
        raise ProtocolError(f"EPC hex has an odd number of digits ({len(text)})")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise ProtocolError(f"EPC is not hex: {epc!r}") from exc


def _decode(raw: bytes) -> Sgtin96:
    if len(raw) * 8 != SGTIN96_BITS:
        raise EpcError(f"SGTIN-96 header with {len(raw) * 8} bits, need {SGTIN96_BITS}")
    value = int.from_bytes(raw, "big")
    filter_value = (value >> 85) & 0x7
    partition = (value >> 82) & 0x7
    if partition >= len(PARTITIONS):
        raise EpcError(f"partition value {partition} is invalid (0..6)")
    m_bits, l_digits, n_bits, k_digits = PARTITIONS[partition]
    company = (value >> (SERIAL_BITS + n_bits)) & ((1 << m_bits) - 1)
    item = (value >> SERIAL_BITS) & ((1 << n_bits) - 1)
    serial = value & ((1 << SERIAL_BITS) - 1)
    if company >= 10**l_digits:
        raise EpcError(f"company prefix {company} has more than {l_digits} digits (partition {partition})")
    if item >= 10**k_digits:
        raise EpcError(f"item reference {item} has more than {k_digits} digits (partition {partition})")
    return Sgtin96(
        filter=filter_value,
        partition=partition,
        company_prefix=str(company).zfill(l_digits),
        item_reference=str(item).zfill(k_digits),
        serial=serial,
    )


def parse_epc(epc: bytes | str) -> Sgtin96 | RawEpc:
    """An SGTIN-96 for header 0x30, else `RawEpc`; `EpcError` when a 0x30 EPC breaks the SGTIN-96 rules.

    Non-hex input raises `ProtocolError`.
    """
    raw = _to_bytes(epc)
    if raw[:1] != bytes((SGTIN96_HEADER,)):
        return RawEpc(raw.hex().upper())
    return _decode(raw)


def decode_sgtin96(epc: bytes | str) -> Sgtin96:
    """Strict: anything that is not a valid SGTIN-96 raises `ProtocolError` (or its `EpcError`)."""
    raw = _to_bytes(epc)
    if raw[:1] != bytes((SGTIN96_HEADER,)):
        header = f"0x{raw[0]:02x}" if raw else "none"
        raise EpcError(f"not an SGTIN-96: header {header}, need 0x30")
    return _decode(raw)


def encode_sgtin96(filter_value: int, company_prefix: str, item_reference: str, serial: int) -> str:
    """The 24-hex-digit EPC for these fields; the partition follows from the company prefix's length.

    Used by the simulator and the tests; the gateway never writes tags.
    """
    if not 0 <= filter_value <= 7:
        raise EpcError(f"filter {filter_value} outside 0..7")
    partition = _PARTITION_BY_PREFIX_DIGITS.get(len(company_prefix))
    if partition is None:
        raise EpcError(f"company prefix of {len(company_prefix)} digits; GS1 prefixes have 6..12")
    m_bits, l_digits, n_bits, k_digits = PARTITIONS[partition]
    if len(item_reference) != k_digits:
        raise EpcError(f"item reference needs {k_digits} digits with a {l_digits}-digit company prefix")
    if not (company_prefix + item_reference).isdigit() or not (company_prefix + item_reference).isascii():
        raise EpcError("company prefix and item reference are decimal digits")
    if not 0 <= serial < 1 << SERIAL_BITS:
        raise EpcError(f"serial {serial} does not fit {SERIAL_BITS} bits")
    value = SGTIN96_HEADER
    value = (value << 3) | filter_value
    value = (value << 3) | partition
    value = (value << m_bits) | int(company_prefix)
    value = (value << n_bits) | int(item_reference)
    value = (value << SERIAL_BITS) | serial
    return value.to_bytes(12, "big").hex().upper()


def sgtin_dict(tag: Sgtin96) -> dict[str, Any]:
    """The JSON-ready form `shelfgate decode sgtin` prints."""
    return {
        "gtin": tag.gtin,
        "serial": str(tag.serial),
        "filter": tag.filter,
        "company_prefix": tag.company_prefix,
        "item_reference": tag.item_reference,
        "tag_uri": tag.tag_uri,
    }


def decode_sgtin(epc_hex: str) -> dict[str, Any]:
    """`shelfgate decode sgtin HEX` → {gtin, serial, filter, company_prefix, item_reference, tag_uri}."""
    return sgtin_dict(decode_sgtin96(epc_hex))
