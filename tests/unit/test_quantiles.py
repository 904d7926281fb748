import math

import pytest

from streams.quantiles import histogram_quantile

BUCKETS = [(60.0, 10.0), (300.0, 30.0), (900.0, 40.0), (math.inf, 40.0)]


@pytest.mark.parametrize(("q", "expected"), [(0.25, 60.0), (0.5, 180.0), (0.75, 300.0),
                                              (0.875, 600.0), (0.1, 24.0)])
def test_linear_interpolation_like_promql(q: float, expected: float) -> None:
    assert histogram_quantile(q, BUCKETS) == pytest.approx(expected)


def test_rank_in_the_inf_bucket_returns_the_highest_bound() -> None:
    assert histogram_quantile(0.99, [(60.0, 1.0), (math.inf, 10.0)]) == 60.0


def test_empty_histogram_is_nan() -> None:
    assert math.isnan(histogram_quantile(0.5, [(60.0, 0.0), (math.inf, 0.0)]))
