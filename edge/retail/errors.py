"""The exception tree of `edge.retail` (STYLE.md rule 10): one base, errors that carry their fields.

`FileIssue`/`FileError` mirror `edge.config.ConfigIssue`/`ConfigError` (key path + line + message, every issue
listed, not only the first) without importing `edge.config`, so the store config can import the catalogue to
check its bins without an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class RetailError(Exception):
    """Base of every error raised by `edge.retail`."""


@dataclass(frozen=True, slots=True)
class FileIssue:
    """One problem in a catalogue or delivery-note file (same shape and text as `edge.config.ConfigIssue`)."""

    path: str
    """Key path (`items[3].price`) or CSV row and column (`row 4 (gtin 06901234567892).price`)."""
    line: int | None
    """1-based line in the file, when known."""
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<file>'}: {self.message}"


class FileError(RetailError):
    """A data file that cannot be used; carries every issue found."""

    def __init__(self, file: Path | str, issues: Sequence[FileIssue]) -> None:
        self.file = Path(file)
        self.issues = list(issues)
        super().__init__(f"{file}: {len(self.issues)} error(s)\n" + "\n".join(f"  {i}" for i in self.issues))


class CatalogueError(FileError):
    """A catalogue file (YAML or CSV) or hub payload that does not validate."""


class UnknownItem(RetailError):
    """A scanned code that the catalogue does not know (or cannot price)."""

    def __init__(self, code: str, reason: str = "not in the catalogue") -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class LaneError(RetailError):
    """An event a checkout lane refuses in its current state (nothing is journaled for it)."""

    def __init__(self, lane: str, reason: str) -> None:
        super().__init__(f"lane {lane}: {reason}")
        self.lane = lane
        self.reason = reason


class StocktakeError(RetailError):
    """A stocktake operation that conflicts with the sessions' state (overlapping area, conflicting scan…)."""


class ReceivingError(RetailError):
    """A receiving scan or delivery note that cannot be booked."""
