"""YAML files with the line of every key, and duplicate keys refused — shared by every file loader of `edge`.

The store config (`edge.config`) and the retail data files (`edge.retail`) both report a bad value as
`line N: key.path: message`. This module holds the machinery they share and imports none of `edge`, so either
may use it without an import cycle (the store config imports the retail catalogue). Each caller translates
`YamlFileError` into its own issue/error types at its boundary (STYLE.md rule 10).

Duplicate mapping keys are errors (YAML 1.2 §3.2.1.1: keys are unique), a pydantic error location maps back to
the nearest line in the file, and a valid file never pays for the line index.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]
"""A key path into a YAML document: mapping keys and sequence indexes, e.g. `("bins", 3, "sku")`."""


class YamlFileError(Exception):
    """A file that cannot be read or parsed as YAML: the 1-based line (when known) and the message."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.message = message


# libyaml (C) when PyYAML was built with it: a 2 000-bin store file loads in ~1 s instead of ~10 s and without
# the tens of MB of heap the pure-Python parser leaves behind (bench/bench_rss.py).
SafeLoader: type[yaml.SafeLoader] = (
    yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader  # type: ignore[assignment]
)


class UniqueKeyLoader(SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses duplicate mapping keys (YAML 1.2 §3.2.1.1: keys are unique)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _line_index(node: yaml.Node, loc: Loc, out: dict[Loc, int]) -> None:
    """Record the 1-based line of every key/item so a pydantic error location maps back to the file."""
    out.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*loc, key)] = key_node.start_mark.line + 1
            _line_index(value_node, (*loc, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*loc, i), out)


class LineIndex(Mapping[Loc, int]):
    """Key path → 1-based line, built only when an error needs a line number.

    Composing a second node tree of a large store file costs seconds and memory on a Pi; a valid file never
    pays for it.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: dict[Loc, int] | None = None

    def _index(self) -> dict[Loc, int]:
        if self._lines is None:
            lines: dict[Loc, int] = {}
            node = yaml.compose(self._text, Loader=SafeLoader)
            if node is not None:
                _line_index(node, (), lines)
            self._lines = lines
        return self._lines

    def __getitem__(self, key: Loc) -> int:
        return self._index()[key]

    def __iter__(self) -> Iterator[Loc]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._index())


def read_text(path: Path, *, encoding: str = "utf-8") -> str:
    """The file's text; `YamlFileError` (no line) when it cannot be read or is not text in `encoding`.

    `encoding="utf-8-sig"` drops a BOM (Excel writes one into CSV exports).
    """
    try:
        return path.read_text(encoding=encoding)
    except OSError as exc:
        raise YamlFileError(None, f"cannot read file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise YamlFileError(None, f"not UTF-8 text: {exc.reason}") from exc


def parse_yaml(text: str) -> tuple[Any, Mapping[Loc, int]]:
    """YAML text → (data, line index); `YamlFileError` with the line for a syntax error or a duplicate key."""
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlFileError(mark.line + 1 if mark else None, f"YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise YamlFileError(None, f"YAML: {exc}") from exc
    return data, LineIndex(text)


def format_loc(loc: Loc) -> str:
    """`("items", 3, "price")` → `items[3].price`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def nearest_line(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    """The line of `loc`, or of its nearest ancestor that has one."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None
