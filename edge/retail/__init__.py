"""Store workflows (issue #6) as pure domain logic: catalogue, checkout lane, stocktake, receiving, stock-out
forecast, replenishment/ABC reports and staff response times.

Nothing here does I/O except reading a catalogue or delivery-note file: no asyncio, no SQLite, no clock (every
function takes the time it needs). The gateway wires device events into these functions and journals their
results; `docs/store-workflows.md` describes every rule as implemented.
"""

from edge.retail.errors import (
    CatalogueError,
    FileIssue,
    LaneError,
    ReceivingError,
    RetailError,
    StocktakeError,
    UnknownItem,
)

__all__ = [
    "CatalogueError",
    "FileIssue",
    "LaneError",
    "ReceivingError",
    "RetailError",
    "StocktakeError",
    "UnknownItem",
]
