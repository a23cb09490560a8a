"""Paired contrasts: how a metric changes when one setting changes and nothing else does,
and whether the data can tell.

A contrast of setting `axis` from value a to value b pairs every run at a with the run at
b that agrees with it on every other setting, seed included, and takes the differences
d = metric(b) - metric(a), shape (n,). Pairing removes what the two runs share (the same
initialisation, data order and cell), so the differences measure the setting alone.

Each statistical choice has one home here, and scipy computes it:

- The test (`sign_flip_p`): under the null hypothesis that the setting does not matter,
  the two runs of a pair are exchangeable, so each difference is as likely to be +d as -d.
  The sign-flip randomization test of the mean difference
  (scipy.stats.permutation_test, permutation_type="samples") is exact under that null
  without assuming normality: it enumerates all 2^n sign patterns for n <= EXACT_UP_TO and
  otherwise draws MC_RESAMPLES patterns with a fixed seed (scipy adds the observed pattern,
  so the Monte Carlo p stays valid; its standard error is below 2e-4 at p = 0.0025).
  Ties (d = 0) flip to themselves: they add nothing to the evidence, and with k non-zero
  differences the smallest p is 2 / 2^k. With 5 pairs it is 0.0625: no claim can stand.
- The interval (`t_interval`): the paired t 95% interval of the mean difference
  (scipy.stats.ttest_1samp). Checked by simulation at n = 3..27 (tests/stats/test_contrasts.py):
  coverage 95-97% for normal and t(3) differences, and 91-96% for skewed ones with many
  zeros (the lowest at n = 3). The percentile bootstrap this replaced covered 75% at n = 3. The interval
  describes the size; the decision is the test's (the two can disagree near the edge).
- The planner (`detectable_difference`, `pairs_needed`): the paired t test's power from
  the noncentral t distribution (scipy.stats.nct), at the observed spread, 80% power.

Whether a contrast is a claim depends on every other claim of the report (Holm's
correction): bnstudy.stats.claims decides that.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from bnstudy.config.settings import RUN_SETTINGS

EXACT_UP_TO = 16  # 2^16 sign patterns: about 0.25 s; above, Monte Carlo
MC_RESAMPLES = 100_000
MC_SEED = 0
POWER = 0.8  # the planner's power
CONFIDENCE = 0.95
NO_TEST = "none (fewer than 2 pairs)"
EXACT = "sign-flip, exact"  # the method of an exact test; a Monte Carlo one says how many signs it drew
CONFIG_KEYS = list(RUN_SETTINGS)


@dataclass(frozen=True)
class Contrast:
    """The paired differences' summary: n pairs over `seeds` distinct seeds; their mean,
    sample std `sd` and paired t 95% interval (low, high); how many are above and below 0;
    the sign-flip p-value and the method that gave it (NaN p and NO_TEST below 2 pairs)."""

    n: int
    seeds: int
    mean: float
    sd: float
    low: float
    high: float
    above: int
    below: int
    p: float
    method: str

    @property
    def ties(self) -> int:
        """Pairs whose difference is exactly 0."""
        return self.n - self.above - self.below


def paired_differences(summary: pd.DataFrame, axis: str, a, b, metric: str) -> pd.Series:
    """(pairs,) metric(b) - metric(a), indexed by the pair's seed, for each pair of runs in
    `summary` (summary.csv's rows) that differ in `axis` alone; pairs where either value is
    NaN are dropped."""
    others = [k for k in CONFIG_KEYS if k != axis]
    # one text key per run from its other settings; repr keeps missing limits (<NA>) comparable
    key = pd.Series([repr(row) for row in summary[others].itertuples(index=False, name=None)], index=summary.index)
    at_a, at_b = summary[axis] == a, summary[axis] == b
    left = summary.loc[at_a, metric].set_axis(key[at_a])
    right = summary.loc[at_b, metric].set_axis(key[at_b])
    seeds = summary.loc[at_b, "seed"].set_axis(key[at_b])
    differences = right - left.reindex(right.index)
    keep = differences.notna()
    return pd.Series(differences[keep].to_numpy(dtype=float), index=seeds[keep].to_numpy(), name=metric)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def sign_flip_p(differences: np.ndarray, axis: int = -1) -> tuple[np.ndarray | float, str]:
    """(two-sided p-value of the mean difference, method) by the sign-flip test (module
    docstring). `differences`: (..., n) along `axis`; p has the other dimensions (a float
    for 1-D input). Exact for n <= EXACT_UP_TO, else Monte Carlo seeded with MC_SEED."""
    differences = np.asarray(differences, dtype=float)
    n = differences.shape[axis]
    exact = n <= EXACT_UP_TO
    series = max(1, differences.size // max(n, 1))
    result = stats.permutation_test(  # batches of about 2^16 sign patterns x series: fast in the cache
        (differences,), _mean, permutation_type="samples", vectorized=True, axis=axis, batch=max(16, 2**16 // series),
        n_resamples=np.inf if exact else MC_RESAMPLES, rng=np.random.default_rng(MC_SEED))  # fmt: skip
    method = EXACT if exact else f"sign-flip, {MC_RESAMPLES:,} random signs"
    p = result.pvalue
    return (float(p) if np.ndim(p) == 0 else p), method


def t_interval(differences: np.ndarray, axis: int = -1) -> tuple:
    """The paired t CONFIDENCE interval (low, high) of the mean of `differences` along
    `axis` (NaN for fewer than 2, and (mean, mean) when they are all equal)."""
    differences = np.asarray(differences, dtype=float)
    if differences.shape[axis] < 2:
        nan = np.full(np.delete(differences.shape, axis if axis >= 0 else differences.ndim + axis), np.nan)
        return (float(nan), float(nan)) if nan.ndim == 0 else (nan, nan)
    # Equal differences (every pair tied) have no spread: scipy warns and gives NaN, which
    # becomes (mean, mean) below; nearly equal ones give an interval as narrow as they are.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = stats.ttest_1samp(differences, 0.0, axis=axis).confidence_interval(CONFIDENCE)
    mean = differences.mean(axis=axis)
    low, high = np.where(np.isnan(ci.low), mean, ci.low), np.where(np.isnan(ci.high), mean, ci.high)
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)


def contrasts(differences: list[pd.Series]) -> list[Contrast]:
    """The Contrast of each Series of paired differences (paired_differences: indexed by
    seed), in order. The sign-flip tests of all series with the same number of pairs run as
    one scipy call on their (series, n) stack: the sign patterns do not depend on the data,
    so each p is the one a call of its own gives (tested), and a report's 15 tests of 18 or
    27 pairs cost 2 calls instead of 15 (1.2 s of the report's 6.8 s)."""
    values = [d.to_numpy(dtype=float) for d in differences]
    p = [(math.nan, NO_TEST)] * len(values)
    for n in {v.size for v in values if v.size > 1}:
        where = [i for i, v in enumerate(values) if v.size == n]
        stacked, method = sign_flip_p(np.stack([values[i] for i in where]))
        for i, p_i in zip(where, np.atleast_1d(stacked)):
            p[i] = (float(p_i), method)
    return [_contrast(v, d.index, *p_i) for v, d, p_i in zip(values, differences, p)]


def contrast(differences: pd.Series) -> Contrast:
    """The Contrast of one Series of paired differences (see contrasts)."""
    return contrasts([differences])[0]


def _contrast(values: np.ndarray, seeds: pd.Index, p: float, method: str) -> Contrast:
    """The Contrast of differences `values` (n,) of pairs from `seeds` (n,), with their test's p."""
    n = values.size
    mean = float(values.mean()) if n else math.nan
    sd = float(values.std(ddof=1)) if n > 1 else math.nan
    low, high = t_interval(values)
    return Contrast(n, int(pd.Index(seeds).nunique()), mean, sd, low, high,
                    int((values > 0).sum()), int((values < 0).sum()), p, method)  # fmt: skip


# ---------------------------------------------------------------- planning
def min_pairs(alpha: float) -> int:
    """The fewest non-tied pairs whose sign-flip test can reach p < alpha: the smallest p,
    both signs alike, is 2 / 2^n."""
    return max(2, math.floor(math.log2(2 / alpha)) + 1)


def t_power(effect: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t test at level `alpha` with n pairs for a true mean
    difference of `effect` standard deviations (noncentral t, scipy.stats.nct)."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    # scipy's nct returns NaN far in its tail, where the power is 1 (or 0) to double precision
    return power if math.isfinite(power) else float(nc > crit)


def detectable_difference(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest true mean difference (in the units of `sd`, the differences' std) that
    n pairs detect with `power` at level `alpha`; inf when n pairs are too few for the
    sign-flip test to reach `alpha` at all, NaN without a spread (n < 2)."""
    if n < 2 or not np.isfinite(sd):
        return math.nan
    if n < min_pairs(alpha):
        return math.inf
    if sd == 0:
        return 0.0
    effect = optimize.brentq(lambda e: t_power(e, n, alpha) - power, 1e-6, 50.0)  # 50 sd: beyond any study
    return effect * sd


MAX_PLANNED_PAIRS = 100_000


def pairs_needed(difference: float, sd: float, alpha: float, power: float = POWER) -> int | None:
    """The fewest pairs that detect a true mean `difference` with `power` at level `alpha`,
    given the differences' std `sd` (and at least min_pairs(alpha)); None when the
    difference is 0 or not finite, or more than MAX_PLANNED_PAIRS would be needed."""
    if not (np.isfinite(difference) and np.isfinite(sd)) or difference == 0:
        return None
    floor = min_pairs(alpha)
    if sd == 0:
        return floor
    effect = abs(difference) / sd
    if t_power(effect, MAX_PLANNED_PAIRS, alpha) < power:
        return None
    low, high = 2, MAX_PLANNED_PAIRS  # power grows with n: bisect for the first n that reaches it
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if t_power(effect, mid, alpha) < power else (low, mid)
    return max(low, floor)
