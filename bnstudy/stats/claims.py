"""Every claim a report makes, in one table (claims.csv), decided together.

A claim is one paired contrast (bnstudy.stats.contrasts) with what it compares: metric(a) -
metric(b) where the runs differ in `axis` alone, within `scope` (a fixed value of another
setting, or "" for the whole study). The report's sentences and tables are rendered from
this table, so text and numbers cannot disagree.

The decision, for the whole report at once (`decide`):
- Holm's step-down correction over every claim of the report with a p-value controls the
  family-wise error at ALPHA: the chance that a study with no real effect makes any claim
  is at most 5%. (scipy has no Holm; `holm` is its textbook definition, tested against a
  worked example.)
- Verdict.HIGHER / LOWER: p_adjusted < ALPHA and the mean does not print as 0.0 pp.
- Verdict.NEGLIGIBLE: the mean rounds to 0.0 pp at the report's precision: never a claim.
- Verdict.TOO_FEW: fewer non-tied pairs than a sign-flip test needs to reach ALPHA even
  alone (6): no data could have made it a claim.
- Verdict.UNCLEAR: the test did not reach it.
For each row the planner adds the smallest difference its pairs detect at 80% power and,
for a claim not made, how many seeds would detect the observed difference (both at ALPHA / m,
the strictest threshold, so the numbers err on the side of more seeds).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bnstudy.stats.contrasts import Contrast, contrasts, detectable_difference, min_pairs, pairs_needed

ALPHA = 0.05  # the family-wise error rate per report
RESOLUTION = 0.0005  # a mean below this prints as 0.0 pp (fractions, one decimal of pp)


class Verdict(str, enum.Enum):
    """What a claim row says about metric(a) - metric(b); the value is claims.csv's."""

    HIGHER = "higher"  # a higher than b
    LOWER = "lower"
    UNCLEAR = "no clear difference"
    TOO_FEW = "too few pairs to tell"
    NEGLIGIBLE = "difference rounds to 0"

    @property
    def clear(self) -> bool:
        return self in (Verdict.HIGHER, Verdict.LOWER)


@dataclass(frozen=True)
class Claim:
    """One comparison and its paired differences metric(a) - metric(b) (n,), indexed by
    seed (contrasts.paired_differences), runs differing in `axis` alone, within `scope` (""
    or "activation relu"); `family` names the report section. decide tests them."""

    family: str
    axis: str
    a: str
    b: str
    metric: str
    scope: str
    differences: pd.Series


COLUMNS = ["family", "axis", "a", "b", "scope", "metric", "n_pairs", "n_seeds", "mean", "sd", "low", "high", "above",
           "below", "ties", "method", "p", "p_adjusted", "verdict", "detectable", "seeds_needed"]  # fmt: skip


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's adjusted p-values (m,) for raw p-values (m,): the i-th smallest becomes
    max over j <= i of min(1, (m - j + 1) p_(j)). NaN stays NaN and does not count in m."""
    p = np.asarray(p, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    steps = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(steps)
    return adjusted


def verdict(c: Contrast, p_adjusted: float) -> Verdict:
    """The verdict of one contrast given its Holm-adjusted p."""
    if c.n and abs(c.mean) < RESOLUTION:
        return Verdict.NEGLIGIBLE
    if p_adjusted < ALPHA:
        return Verdict.HIGHER if c.mean > 0 else Verdict.LOWER
    if c.above + c.below < min_pairs(ALPHA):
        return Verdict.TOO_FEW
    return Verdict.UNCLEAR


def seeds_needed(c: Contrast, alpha: float) -> float:
    """Seeds that would detect the observed mean with 80% power at `alpha` (pairs needed
    over the pairs each seed gives here); NaN when no count would."""
    pairs = pairs_needed(c.mean, c.sd, alpha)
    if pairs is None or not c.seeds:
        return math.nan
    return float(math.ceil(pairs * c.seeds / c.n))


def decide(claims: list[Claim]) -> pd.DataFrame:
    """claims.csv: one row per claim (COLUMNS), each claim's contrast (contrasts.contrasts,
    every test at once), Holm-adjusted over all of them together."""
    tested = contrasts([claim.differences for claim in claims])
    p = np.array([c.p for c in tested], dtype=float)
    adjusted = holm(p)
    m = int(np.count_nonzero(~np.isnan(p)))
    strictest = ALPHA / max(m, 1)
    rows = []
    for claim, c, p_adj in zip(claims, tested, adjusted):
        v = verdict(c, p_adj)
        rows.append([claim.family, claim.axis, claim.a, claim.b, claim.scope, claim.metric, c.n, c.seeds, c.mean,
                     c.sd, c.low, c.high, c.above, c.below, c.ties, c.method, c.p, p_adj, v.value,
                     detectable_difference(c.sd, c.n, strictest),
                     math.nan if v.clear or v is Verdict.NEGLIGIBLE else seeds_needed(c, strictest)])  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def verdicts(table: pd.DataFrame) -> pd.Series:
    """The table's verdict column as Verdict values."""
    return table["verdict"].map(Verdict)
