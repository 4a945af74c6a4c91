"""The statistics behind the ablation report: intervals, Test@k, paired differences.

Pure Python + numpy (no Dagster, no torch), so it is unit-tested against hand-computed values.
Every bootstrap takes a seed: the same eval_results always give the same report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_RESAMPLES = 2000


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; unlike the normal interval it stays
    inside [0, 1] and is not degenerate at 0 or n successes."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the bounds are exactly 0 / 1 at 0 / n successes; rounding would leave 1e-16 off
    return (0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == n else min(1.0, centre + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Test@k (pass@k) from n samples with c correct (Chen et al. 2021, the Codex
    paper): 1 - C(n-c, k) / C(n, k), as their numerically stable product."""
    if not 0 < k <= n:
        raise ValueError(f"k must lie in [1, n={n}], got {k}")
    if not 0 <= c <= n:
        raise ValueError(f"c must lie in [0, n={n}], got {c}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _resample_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` bootstrap draws of the rows (problems) of ``values``."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[idx].mean(axis=1)


def bootstrap_interval(
    values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean over problems. Each value is one problem's score
    (e.g. the share of its samples that are correct), so samples of one problem, which are not
    independent, are resampled together."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return (math.nan, math.nan)
    means = _resample_means(v, resamples, seed)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """mean(a) - mean(b) over the same problems (a[i], b[i] one problem) and its paired
    bootstrap interval: problems are resampled once for both, so what the two share (easy and
    hard problems) cancels and the interval is far narrower than two independent ones."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired scores need the same problems: {x.shape} vs {y.shape}")
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    lo, hi = bootstrap_interval(x - y, resamples=resamples, seed=seed, level=level)
    return (float((x - y).mean()), lo, hi)


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value for paired binary outcomes (e.g. greedy correct):
    a binomial test on the discordant problems only."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"paired outcomes need the same problems: {x.shape} vs {y.shape}")
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def verdict(lo: float, hi: float, expected_sign: int) -> str:
    """'supported' when the interval excludes zero on the expected side, 'contradicted' when it
    excludes zero on the other side, 'within noise' when it contains zero."""
    if math.isnan(lo) or math.isnan(hi):
        return "not measured"
    if lo > 0 or hi < 0:
        return "supported" if (lo > 0) == (expected_sign > 0) else "contradicted"
    return "within noise"
