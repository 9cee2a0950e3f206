"""RFID: serial UHF modules (M100 / JRD-4035 family) and LLRP fixed readers — codecs, SGTIN-96, presence, clients.

`protocol` (frames) and `epc` (SGTIN-96) are sans-IO codecs, `presence` is pure logic, `client` owns a serial
port. `llrp` drives fixed readers over LLRP through sllurp, which is GPLv3 and therefore an optional extra
(`pip install 'shelfgate[llrp]'`): its names are exported lazily here, and even `drivers.rfid.llrp` imports
sllurp only when an `LlrpReaderClient` is constructed, so this package imports and runs without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drivers.rfid.llrp import (
        LlrpCounters,
        LlrpReaderClient,
        LlrpSupportMissing,
        LlrpTagRead,
        sllurp_available,
    )

_LAZY_LLRP = frozenset(
    {"LlrpCounters", "LlrpReaderClient", "LlrpSupportMissing", "LlrpTagRead", "sllurp_available"}
)

__all__ = ["LlrpCounters", "LlrpReaderClient", "LlrpSupportMissing", "LlrpTagRead", "sllurp_available"]


def __getattr__(name: str) -> Any:
    """Load the LLRP names on first use (PEP 562), keeping `import drivers.rfid` light."""
    if name in _LAZY_LLRP:
        return getattr(importlib.import_module("drivers.rfid.llrp"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
