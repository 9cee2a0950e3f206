"""Retail scales on a serial line: MT-SICS and NCI/ECR codecs, and an async client for each.

`ScaleClient` (MT-SICS) and `NciScaleClient` (NCI/ECR) share one public surface — constructor, lifecycle,
`online`, `counters`, `weigh_stable()`, `zero()` — so the gateway picks one by config (`protocol: mtsics|nci`).
"""

from drivers.scale.client import ScaleClient, SerialScaleBase
from drivers.scale.models import (
    Availability,
    ScaleCommandError,
    ScaleCounters,
    ScaleError,
    ScaleNotStable,
    ScaleRangeError,
    ScaleSettings,
    ScaleTimeout,
    ScaleUnavailable,
    StableWeight,
)
from drivers.scale.nci_client import NciScaleClient

__all__ = [
    "Availability",
    "NciScaleClient",
    "ScaleClient",
    "ScaleCommandError",
    "ScaleCounters",
    "ScaleError",
    "ScaleNotStable",
    "ScaleRangeError",
    "ScaleSettings",
    "ScaleTimeout",
    "ScaleUnavailable",
    "SerialScaleBase",
    "StableWeight",
]
