"""Names of the store workflows' stock events, `stocktake.completed` and `stock.received` (issue #6).

The payload models live in `cloud_bridge.contract` with every other event; this module keeps the short names
the gateway's stocktake and receiving services use. The hub stores both types generically (`hub.db.EFFECTS`:
a type without an effect is stored and marked applied).
"""

from __future__ import annotations

from typing import Final

from cloud_bridge.contract import (
    RECEIVED_QTY_MAX,
    EventType,
    ReceivedLine,
    ReceivedTotal,
    SignedMoney,
    StockReceived,
    StocktakeAdjustment,
    StocktakeCompleted,
    StocktakeLine,
)

STOCKTAKE_COMPLETED: Final = EventType.STOCKTAKE_COMPLETED.value
STOCK_RECEIVED: Final = EventType.STOCK_RECEIVED.value
EVENT_TYPES: Final = (STOCKTAKE_COMPLETED, STOCK_RECEIVED)
QTY_MAX: Final = RECEIVED_QTY_MAX
"""AI 30 / AI 37 carry up to 8 digits (GS1 General Specifications §3.6.6, §3.6.7)."""

__all__ = [
    "EVENT_TYPES",
    "QTY_MAX",
    "STOCKTAKE_COMPLETED",
    "STOCK_RECEIVED",
    "ReceivedLine",
    "ReceivedTotal",
    "SignedMoney",
    "StockReceived",
    "StocktakeAdjustment",
    "StocktakeCompleted",
    "StocktakeLine",
]
