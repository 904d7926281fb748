"""``histogram_quantile`` as Prometheus computes it, for the terminal view."""

from __future__ import annotations

import math
from collections.abc import Sequence


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Quantile from cumulative ``(upper bound, count)`` buckets ending with +Inf.

    Linear interpolation inside the bucket that holds the rank, as PromQL does; a rank
    in the +Inf bucket returns the highest finite bound; no observations returns NaN.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] == 0:
        return math.nan
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
