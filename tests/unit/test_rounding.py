"""``round_all`` gives exactly Python's ``round`` (the serving statistics round every box's score and area)."""

from __future__ import annotations

import math

import numpy as np

from cvplatform.utils.rounding import round_all


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


def test_round_all_equals_round_on_float32_scores_areas_halves_and_specials():
    rng = np.random.default_rng(0)
    cases = [
        rng.random(50_000).astype(np.float32),  # scores: float32, the product with 1e6 is exact
        rng.uniform(0, 64, 50_000) * rng.uniform(0, 64, 50_000) / 4096.0,  # areas: float64 shares
        (np.arange(0, 20_000) + 0.5) / 1e6,  # on (or one rounding away from) a half
        np.arange(0, 20_001) / 2e4,
        rng.normal(0, 1e-5, 10_000),  # tiny negatives round to -0.0
        np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e300, -1e-12, 0.1234565, 2.5e-6]),
    ]
    for values in cases:
        got = round_all(values)
        want = [round(float(v), 6) for v in values]
        assert len(got) == len(want) and all(_same(a, b) for a, b in zip(got, want, strict=True))
    assert round_all([0.123, 1.0], digits=2) == [0.12, 1.0]
    assert round_all([]) == []
