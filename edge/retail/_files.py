"""Reading the retail data files: YAML with the line of every key, CSV with the line of every row.

The YAML machinery (duplicate keys refused, a pydantic error location mapped back to the nearest line, a valid
file never paying for the line index) is `edge.yamlfile`, shared with the store config; this module turns its
errors into `FileIssue`s and adds the CSV side.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge import yamlfile
from edge.retail.errors import FileIssue
from edge.yamlfile import Loc, format_loc, nearest_line


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a BOM, as Excel writes it into CSV exports, is dropped); FileIssue list on failure."""
    try:
        return yamlfile.read_text(path, encoding="utf-8-sig")
    except yamlfile.YamlFileError as exc:
        raise Unreadable([FileIssue("", exc.line, exc.message)]) from exc


class Unreadable(Exception):
    """A file that cannot be read or parsed; each loader turns its issues into its own FileError."""

    def __init__(self, issues: list[FileIssue]) -> None:
        super().__init__(str(issues[0]))
        self.issues = issues


def parse_yaml(text: str) -> tuple[Any, Mapping[Loc, int]]:
    """YAML text → (data, line index); `Unreadable` with the line for a syntax error or a duplicate key."""
    try:
        return yamlfile.parse_yaml(text)
    except yamlfile.YamlFileError as exc:
        raise Unreadable([FileIssue("", exc.line, exc.message)]) from exc


def issues_from(exc: ValidationError, lines: Mapping[Loc, int], prefix: Loc = ()) -> list[FileIssue]:
    """Pydantic errors → one FileIssue each, with the key path and the nearest line."""
    out: list[FileIssue] = []
    for err in exc.errors():
        loc = (*prefix, *(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))))
        msg = err["msg"].removeprefix("Value error, ")
        out.append(FileIssue(format_loc(loc), nearest_line(loc, lines), msg))
    return out


def csv_rows(text: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(1-based line where the row starts, row as {column: stripped text}) for each data row of a CSV text.

    The header row names the columns (case-insensitive, surrounding spaces ignored); empty rows are skipped.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    line = 1
    for row in reader:
        start = line
        line = reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            continue
        cells = {name: (row[i].strip() if i < len(row) else "") for i, name in enumerate(header)}
        if len(row) > len(header):
            cells["__extra__"] = ",".join(row[len(header) :])
        yield start, cells
    if header is None:
        return


def csv_header(text: str) -> list[str]:
    """The header row's column names (lower-case, stripped); [] for an empty file."""
    for row in csv.reader(io.StringIO(text, newline="")):
        if any(cell.strip() for cell in row):
            return [cell.strip().lower() for cell in row]
    return []
