"""Small statistics helpers."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/mean/max in milliseconds, and the sample count."""

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000.0, 2)

    return {
        "n": len(seconds),
        "p50": ms(percentile(seconds, 50)),
        "p95": ms(percentile(seconds, 95)),
        "p99": ms(percentile(seconds, 99)),
        "mean": ms(sum(seconds) / len(seconds)) if seconds else None,
        "max": ms(max(seconds)) if seconds else None,
    }


def diff(a: float | None, b: float | None, digits: int = 2) -> float | None:
    """a − b, or None."""
    return None if a is None or b is None else round(a - b, digits)


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    """a / b, or None."""
    return None if a is None or not b else round(a / b, digits)
