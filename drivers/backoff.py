"""Retry delays shared by every driver's connection layer (STYLE.md rule 7)."""

from __future__ import annotations

import random


def full_jitter_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Backoff delay for a retry: uniform in [0, min(cap, base·2^attempt)] ("full jitter").

    Full jitter spreads the retries of many gateways/devices that failed together (one store power cut)
    instead of letting them retry in lock-step (AWS Architecture Blog, "Exponential Backoff And Jitter").
    """
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt, 0), 32))
    return rng.uniform(0.0, ceiling)
