"""``round(v, digits)`` of many values at once, with exactly Python's results (the serving statistics round every
answered box's score and area)."""

from __future__ import annotations

from typing import Any


def round_all(values: Any, digits: int = 6) -> list[float]:
    """``[round(float(v), digits) for v in values]``, vectorised, with the same floats.

    numpy's multiply-``rint``-divide is what Python's correctly rounded ``round`` gives wherever ``v * 10**digits``
    lies clearly away from a half (then ``rint`` picks the same integer ``k``, and ``k / 10**digits`` is the double
    nearest to the decimal, as ``round``'s is). Values within the product's rounding error of a half, not finite or
    too large for that argument go through ``round`` itself.

    Example:
        >>> round_all([0.1234565, 0.5, 2.0 / 3.0, float("nan")])[:3]
        [0.123456, 0.5, 0.666667]
    """
    import numpy as np

    x = np.asarray(values, np.float64).reshape(-1)
    scale = 10.0 ** digits
    with np.errstate(invalid="ignore", over="ignore"):
        y = x * scale
        out = (np.rint(y) / scale).tolist()
        unsure = ~(np.abs(y - np.floor(y) - 0.5) > 1e-6) | ~(np.abs(y) < 1e9)
    if unsure.any():
        for i in np.flatnonzero(unsure).tolist():
            out[i] = round(float(x[i]), digits)
    return out


__all__ = ["round_all"]
