"""Capped exponential backoff with full jitter: every draw within [0, min(cap, base·2^n)], reset restarts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge.backoff import Backoff


@given(
    base_s=st.floats(min_value=0.001, max_value=5.0),
    factor=st.floats(min_value=1.0, max_value=1000.0),
    seed=st.integers(min_value=0, max_value=2**32),
    attempts=st.integers(min_value=1, max_value=200),
)
def test_every_delay_is_within_the_capped_exponential_ceiling(
    base_s: float, factor: float, seed: int, attempts: int
) -> None:
    backoff = Backoff(base_s, base_s * factor, rng=random.Random(seed))
    for attempt in range(attempts):
        ceiling_s = min(base_s * factor, base_s * 2.0**attempt)
        delay_s = backoff.next_delay_s()
        assert 0.0 <= delay_s <= ceiling_s * (1 + 1e-9)
    assert backoff.attempt == attempts


def test_full_jitter_spreads_delays_over_the_whole_window() -> None:
    """Not 'base·2^n plus a little noise': draws at the cap cover low and high parts of [0, cap]."""
    draws = [Backoff(0.5, 30.0, rng=random.Random(seed), attempt=20).next_delay_s() for seed in range(200)]
    assert min(draws) < 5.0
    assert max(draws) > 25.0


def test_reset_starts_again_from_base() -> None:
    backoff = Backoff(0.5, 30.0, rng=random.Random(1))
    for _ in range(10):
        backoff.next_delay_s()
    assert backoff.ceiling_s() == 30.0
    backoff.reset()
    assert backoff.ceiling_s() == 0.5


@pytest.mark.parametrize(("base_s", "cap_s"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_nonsense_parameters_are_rejected(base_s: float, cap_s: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base_s, cap_s)
