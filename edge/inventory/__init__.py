"""The inventory engine: per-bin weight estimators (samples → counts) and alert rules (counts → alerts).

Pure and deterministic: no asyncio, no clock, no I/O; every call carries its timestamp. See ARCHITECTURE.md,
"The inventory engine".
"""

from edge.inventory.alerts import AlertRules, AlertTransition
from edge.inventory.estimator import BinEstimator
from edge.inventory.events import Ambiguous, CountCause, CountChanged, EngineEvent, FaultKind, SensorFault

__all__ = [
    "AlertRules",
    "AlertTransition",
    "Ambiguous",
    "BinEstimator",
    "CountCause",
    "CountChanged",
    "EngineEvent",
    "FaultKind",
    "SensorFault",
]
