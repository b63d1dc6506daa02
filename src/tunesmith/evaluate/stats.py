"""Confidence intervals and paired significance tests on per-item metric statistics.

Both work on the (items x statistics) matrices of `tunesmith.evaluate.metrics`, so corpus metrics
(BLEU, macro-F1, perplexity) are resampled exactly, not approximated by a mean of item scores:

- the bootstrap draws items with replacement (as multinomial counts, one matrix product for all
  resamples) and takes the 2.5th and 97.5th percentiles of the metric;
- the paired bootstrap draws the same items for both systems and gives the difference's interval;
- approximate randomization (Riezler and Maxwell 2005, the test sacrebleu uses) swaps the two
  systems' outputs on a random half of the items and counts how often the difference is at least
  as large as the one observed: the p-value of "the systems are the same".

The metrics are arbitrary functions of the summed statistics, which scipy's bootstrap and
permutation tests cannot take, hence these few lines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from tunesmith.evaluate.metrics import ROW_SCORERS, ScoreFn

Verdict = Literal["better", "worse", "no significant difference"]


@dataclass(frozen=True)
class _Record:
    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (nested records too), as the reports store them."""
        return asdict(self)


@dataclass(frozen=True)
class Interval(_Record):
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedTest(_Record):
    """System B against system A on one metric: the difference B - A, its interval and p-value."""

    delta: Interval
    p_value: float
    verdict: Verdict


def _resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples x n) counts of how often each item is drawn in each bootstrap sample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def _scores(score: ScoreFn, sums: np.ndarray) -> np.ndarray:
    """`score` of each row of `sums`: at once for means, row by row for other metrics."""
    if score in ROW_SCORERS:
        return ROW_SCORERS[score](sums)
    return np.fromiter((score(row) for row in sums), dtype=np.float64, count=len(sums))


def bootstrap_interval(
    stats: np.ndarray, score: ScoreFn, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Interval:
    """The metric on all items and its percentile bootstrap interval."""
    value = score(stats.sum(axis=0))
    if len(stats) < 2:
        return Interval(value, value, value)
    sampled = _scores(score, _resample_counts(len(stats), resamples, seed) @ stats)
    low, high = np.nanpercentile(sampled, [50 * (1 - level), 50 * (1 + level)])
    return Interval(value, float(low), float(high))


def paired_test(
    stats_a: np.ndarray,
    stats_b: np.ndarray,
    score: ScoreFn,
    *,
    higher_is_better: bool = True,
    resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedTest:
    """Compare system B with system A on the same items (row i of both is item i).

    The verdict says whether B is better, worse, or not significantly different at level `alpha`
    (approximate randomization), in the metric's own direction.
    """
    if stats_a.shape != stats_b.shape:
        raise ValueError(
            f"paired systems must be scored on the same items: {stats_a.shape} != {stats_b.shape}"
        )
    observed = score(stats_b.sum(axis=0)) - score(stats_a.sum(axis=0))
    n = len(stats_a)
    if n < 2:
        return PairedTest(Interval(observed, observed, observed), 1.0, "no significant difference")
    counts = _resample_counts(n, resamples, seed)
    deltas = _scores(score, counts @ stats_b) - _scores(score, counts @ stats_a)
    low, high = np.nanpercentile(deltas, [50 * (1 - (1 - alpha)), 50 * (1 + (1 - alpha))])

    rng = np.random.default_rng(seed + 1)
    swap = rng.integers(0, 2, size=(resamples, n)).astype(np.float64)
    diff = stats_b - stats_a  # swapping item i moves diff_i from B's sums to A's
    sums_a = stats_a.sum(axis=0) + swap @ diff
    sums_b = stats_b.sum(axis=0) - swap @ diff
    shuffled = np.abs(_scores(score, sums_b) - _scores(score, sums_a))
    p_value = float((np.sum(shuffled >= abs(observed) - 1e-12) + 1) / (resamples + 1))

    verdict: Verdict = "no significant difference"
    if p_value < alpha and observed != 0:
        improved = observed > 0 if higher_is_better else observed < 0
        verdict = "better" if improved else "worse"
    return PairedTest(Interval(observed, float(low), float(high)), p_value, verdict)


def difference_interval(a: np.ndarray, b: np.ndarray, *, level: float = 0.95) -> Interval:
    """The mean of `a` minus the mean of `b`, two independent samples (two versions' online scores,
    not the same items), with Welch's t interval: unequal variances, unequal sizes."""
    from scipy import stats

    delta = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2 or (a.var() == 0 and b.var() == 0):
        return Interval(delta, delta, delta)
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return Interval(delta, float(low), float(high))
