"""Strict JSON: what the gateway's command intake and both HTTP APIs accept (one implementation for all three).

Python's `json` accepts what JSON does not: ``NaN``/``Infinity`` (RFC 8259 §6), numbers out of a double's range
(``1e999`` becomes ``inf``), lone UTF-16 surrogates from ``"\\ud800"`` escapes and duplicate member names (both
outside I-JSON, RFC 7493 §2.1–2.3). Each of those has crashed or confused a consumer here (a 500 from FastAPI's
422 echo, a string SQLite cannot store, readers disagreeing which duplicate wins). `loads` refuses them all,
and nesting deeper than `max_depth`, with a `ValueError` saying why — checked iteratively, so a hostile
document cannot exhaust the recursion limit in the check.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON (RFC 8259 §6)")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` refusing duplicate names (RFC 7493 §2.3): readers disagree which one wins."""
    doc: dict[str, Any] = {}
    for name, value in pairs:
        if name in doc:
            raise ValueError(f"duplicate member name {name[:40]!r} (RFC 7493 §2.3)")
        doc[name] = value
    return doc


def utf8_ok(text: str) -> bool:
    """False for a string holding a lone surrogate (it cannot be encoded, stored or echoed)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse(text: str, *, max_depth: int) -> Any:
    """`json.loads` without NaN/Infinity and duplicate names; `ValueError` with the reason (also for a document
    nested so deep that the parser itself gives up). Pair it with `check_tree`, or use `loads`."""
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_members)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None


def check_tree(doc: object, *, max_depth: int) -> None:
    """Depth ≤ `max_depth`, every number a finite double, no lone surrogate in any name or string."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not utf8_ok(node):
                raise ValueError(
                    "a string holds a lone UTF-16 surrogate, which is not Unicode (RFC 7493 §2.1)"
                )
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError("a number is out of the range of an IEEE 754 double (RFC 7493 §2.2)")
        elif isinstance(node, dict | list):
            if depth > max_depth:
                raise ValueError(f"nested deeper than {max_depth} levels")
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)


def loads(text: str, *, max_depth: int) -> Any:
    """The document in `text` if it is strict JSON nested at most `max_depth` deep; else `ValueError` (why)."""
    doc = parse(text, max_depth=max_depth)
    check_tree(doc, max_depth=max_depth)
    return doc
