"""Capped exponential backoff with full jitter, for reconnect loops.

Full jitter (a uniform draw in ``[0, min(cap, base * 2**attempt)]``) spreads the reconnects of a fleet of
gateways that all lost the same broker at the same instant; without it they retry in lock-step and the broker
sees a thundering herd at every step. See M. Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog
(2015), and aiomqtt's reconnect guide.

Sans-IO: it only computes delays; the caller sleeps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays for attempt 0, 1, 2, … until `reset()` after a success."""

    base_s: float
    cap_s: float
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError(
                f"backoff needs 0 < base_s <= cap_s, got base_s={self.base_s} cap_s={self.cap_s}"
            )

    def ceiling_s(self) -> float:
        """The upper bound of the next draw: base·2^attempt, capped (computed without overflow)."""
        if self.attempt >= 64:
            return self.cap_s
        return min(self.cap_s, self.base_s * (1 << self.attempt))

    def next_delay_s(self) -> float:
        """Draw the next delay in ``[0, ceiling]`` and advance the attempt counter."""
        delay_s = self.rng.uniform(0.0, self.ceiling_s())
        self.attempt += 1
        return delay_s

    def reset(self) -> None:
        """After a success the next failure starts again from `base_s`."""
        self.attempt = 0
