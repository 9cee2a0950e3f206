"""`shelfgate decode KIND VALUE` — the installer's "what is this device saying?" tool.

JSON on stdout; on bad input exit 2 with a one-line reason on stderr. Each kind calls the pure decode
function of its driver's codec (the same code the gateway runs), so what the tool says is what the gateway
would understand.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any

from drivers.modbus.protocol import ProtocolError, ValueType, WordOrder, decode_value
from shelfgate.exits import EXIT_BAD_INPUT


def _words(text: str) -> list[int]:
    """Register words as decimal or 0x-hex, separated by commas, spaces or colons."""
    parts = [p for p in re.split(r"[,\s:;]+", text.strip()) if p]
    if not parts:
        raise ProtocolError("no register words given (e.g. 0x4145,0x851f)")
    out = []
    for p in parts:
        try:
            w = int(p, 0)
        except ValueError as exc:
            raise ProtocolError(f"{p!r} is not a register word (decimal or 0x-hex)") from exc
        if not 0 <= w <= 0xFFFF:
            raise ProtocolError(f"{p} is not a 16-bit register word")
        out.append(w)
    return out


def decode_modbus(args: argparse.Namespace) -> dict[str, Any]:
    """Register words → the value a profile with this type and word order reads."""
    value_type = ValueType(args.type)
    words = _words(args.value)
    value = decode_value(words, value_type, WordOrder(args.word_order)) * args.scale
    if math.isnan(value) or math.isinf(value):
        raise ProtocolError(f"the words decode to {value} as {value_type.value} {args.word_order}")
    return {"value": round(value, 9)}  # drop float noise from the scale, keep float32 precision


def _bthome(args: argparse.Namespace) -> dict[str, Any]:
    from drivers.ble.protocol import decode_bthome

    return decode_bthome(args.value, key_hex=args.key, mac=args.mac)


def _sgtin(args: argparse.Namespace) -> dict[str, Any]:
    from drivers.rfid.epc import decode_sgtin

    return decode_sgtin(args.value)


def _m100(args: argparse.Namespace) -> dict[str, Any]:
    from drivers.rfid.protocol import decode_m100

    return decode_m100(args.value)


def _gs1(args: argparse.Namespace) -> dict[str, Any]:
    from drivers.barcode.protocol import decode_gs1

    return decode_gs1(args.value)


def _mtsics(args: argparse.Namespace) -> dict[str, Any]:
    from drivers.scale.protocol import decode_mtsics

    return decode_mtsics(args.value)


def _nci(args: argparse.Namespace) -> dict[str, Any]:
    from drivers.scale.protocol import decode_nci

    return decode_nci(args.value)


KINDS: dict[str, tuple[Callable[[argparse.Namespace], dict[str, Any]], str]] = {
    "modbus": (decode_modbus, "register words, e.g. 0x4145,0x851f (with --type, --word-order, --scale)"),
    "bthome": (_bthome, "BTHome v2 service data hex (0xFCD2), with --key HEX --mac MAC when encrypted"),
    "sgtin": (_sgtin, "an EPC as hex, e.g. 3034257BF7194E4000001A85"),
    "m100": (_m100, "a serial UHF module frame as hex (BB … 7E)"),
    "gs1": (_gs1, r"scanned text: GS1 element string with GS as \x1d, or HRI like (01)…(10)…"),
    "mtsics": (_mtsics, r"an MT-SICS response line, e.g. 'S S     100.00 g'"),
    "nci": (_nci, "an NCI/ECR response frame as hex"),
}


def add_parser(sub: Any) -> None:
    """Register `decode` on the CLI's subparsers."""
    kinds = "; ".join(f"{k}: {help_}" for k, (_, help_) in KINDS.items())
    d = sub.add_parser("decode", help="decode what a device says (JSON on stdout)", description=kinds)
    d.add_argument("kind", choices=sorted(KINDS))
    d.add_argument("value", help="the bytes, words or text to decode (see the kinds above)")
    d.add_argument("--type", choices=[t.value for t in ValueType], default="int32", help="modbus value type")
    d.add_argument(
        "--word-order", choices=[o.value for o in WordOrder], default="ABCD", help="modbus word order"
    )
    d.add_argument("--scale", type=float, default=1.0, help="modbus: multiply the raw value by this")
    d.add_argument("--key", default=None, help="bthome: the device's AES-CCM bind key (hex)")
    d.add_argument("--mac", default=None, help="bthome: the device's MAC address")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Decode and print; exit 2 with one line on bad input."""
    fn, _ = KINDS[args.kind]
    value = args.value.encode().decode("unicode_escape") if args.kind == "gs1" else args.value
    args.value = value
    try:
        result = fn(args)
    except ValueError as exc:  # every family's ProtocolError is a ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"shelfgate decode {args.kind}: {reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ImportError:
        print(f"shelfgate decode {args.kind}: this build has no {args.kind} driver", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(result, ensure_ascii=False, sort_keys=True))
    return 0
