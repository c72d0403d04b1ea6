"""Decay by age: a signal is worth half as much every half-life.

    weight(age) = 0.5 ** (age / half_life) = exp(-ln 2 / half_life * age)

The rate is computed once per rule at load time; the hot path multiplies and
calls `math.exp` once per counted occurrence. Ages below zero (activities dated
after `now`, from clock skew) count as zero: a signal never weighs more than
its points.
"""

from __future__ import annotations

import math

DAY = 86400.0


def decay_rate(half_life_days: float) -> float:
    """Per-second rate k such that exp(-k * age) halves every `half_life_days`."""
    return math.log(2) / (float(half_life_days) * DAY)


def weight(age_s: float, half_life_days: float) -> float:
    """The factor applied to a signal `age_s` seconds old (0 or less counts as new)."""
    return math.exp(-decay_rate(half_life_days) * max(age_s, 0.0))
