"""Paired contrasts: how a metric changes when one setting changes and nothing else does.

A contrast of setting `axis` from value a to value b pairs every run at a with the run at
b that agrees with it on every other setting, seed included, and takes the differences
metric(b) - metric(a). Pairing removes what the two runs share (the same initialisation,
data order and cell), so the differences measure the setting alone.

A difference is claimed only when its bootstrap 95% interval excludes 0 and there are at
least MIN_PAIRS pairs; otherwise the words are "no clear difference at this many seeds".
The bootstrap resamples the pairs (over seeds and cells alike) with a fixed generator
seed, so a report is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bnstudy.aggregate import CONFIG_KEYS

BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 0
MIN_PAIRS = 3  # below this, an interval says nothing: too few seeds to tell
NO_CLEAR = "no clear difference at this many seeds"  # what a report says instead of a claim


@dataclass(frozen=True)
class Contrast:
    """metric(b) - metric(a) over n pairs: mean, bootstrap 95% interval (low, high), and how
    many pairs are above, below and equal to 0."""

    n: int
    mean: float
    low: float
    high: float
    above: int
    below: int

    @property
    def clear(self) -> bool:
        """Whether the data support a difference: enough pairs and an interval without 0."""
        return self.n >= MIN_PAIRS and (self.low > 0 or self.high < 0)

    @property
    def direction(self) -> int:
        """+1 (b higher), -1 (b lower) or 0 (no clear difference)."""
        return 0 if not self.clear else 1 if self.low > 0 else -1


def paired_differences(summary: pd.DataFrame, axis: str, a, b, metric: str) -> pd.Series:
    """(pairs,) metric(b) - metric(a) for each pair of runs in `summary` (summary.csv's rows)
    that differ in `axis` alone; pairs where either value is NaN are dropped."""
    others = [k for k in CONFIG_KEYS if k != axis]
    # one text key per run from its other settings; repr keeps missing limits (<NA>) comparable
    key = pd.Series([repr(row) for row in summary[others].itertuples(index=False, name=None)], index=summary.index)
    left = summary.loc[summary[axis] == a, metric].set_axis(key[summary[axis] == a])
    right = summary.loc[summary[axis] == b, metric].set_axis(key[summary[axis] == b])
    return (right - left.reindex(right.index)).dropna().reset_index(drop=True)


def bootstrap_interval(values: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED):
    """The percentile bootstrap 95% interval (low, high) of the mean of `values` (n,):
    `samples` resamples of n values drawn with replacement by numpy's default generator
    seeded with `seed`. (nan, nan) for no values."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return np.nan, np.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def signed_pp(x: float) -> str:
    """A difference of fractions in signed percentage points: 0.012 -> "+1.2 pp"."""
    return f"{100 * x:+.1f} pp"


def interval_text(low: float, high: float) -> str:
    """An interval of differences of fractions: "95% interval +0.4 to +2.0 pp"."""
    return f"95% interval {100 * low:+.1f} to {signed_pp(high)}"


def contrast(differences: pd.Series) -> Contrast:
    """The Contrast of a Series of paired differences."""
    values = differences.to_numpy(dtype=float)
    low, high = bootstrap_interval(values)
    mean = float(values.mean()) if values.size else np.nan
    return Contrast(int(values.size), mean, low, high, int((values > 0).sum()), int((values < 0).sum()))


def compare(summary: pd.DataFrame, axis: str, a, b, metric: str) -> Contrast:
    """The contrast of `metric` from axis = a to axis = b (see the module docstring)."""
    return contrast(paired_differences(summary, axis, a, b, metric))
