"""Paired comparisons between the variants: for each pair of variants and each compared
metric, metric(a) - metric(b) over the runs that differ in the variant only (same cell,
same seed), as claims (bnstudy.stats.claims) that the report decides together.

Runs stuck at chance and runs with fewer than two counted epochs are left out of the
pairs: a flat curve at 10% would pass as perfect stability, and one epoch has no swing.
The table is comparisons.csv: the claims of family COMPARISON in COLUMNS.
"""

from __future__ import annotations

import itertools

import pandas as pd

from bnstudy.stats.claims import Claim
from bnstudy.stats.contrasts import paired_differences
from bnstudy.config.variants import VARIANTS, variant

COMPARISON = "comparison"  # the claims' family
# (a, b): each row is a minus b, so "bn_before above none" reads as the row's sign. Every
# pair of the variant table, in its order, with a variant without BN always second:
# (bn_before, none), (bn_after, none), (bn_before, bn_after).
VARIANT_PAIRS = [(y, x) if not variant(x).has_bn else (x, y) for x, y in itertools.combinations(VARIANTS, 2)]
# The compared metrics (bnstudy.results.metrics names them): the volatility first, the report's subject.
COMPARED = ["worst_drop", "mean_abs_change", "late_std", "worst_drop_precise_bn", "final_acc"]
COLUMNS = ["a", "b", "metric", "n_pairs", "mean", "low", "high", "above", "below", "verdict", "method", "p",
           "p_adjusted"]  # fmt: skip


def comparable_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The runs of summary.csv that may pair: not stuck, two counted epochs or more."""
    return summary[~summary["stuck"] & (summary["epochs_used"] > 1)]


def comparison_claims(summary: pd.DataFrame) -> list[Claim]:
    """One claim per pair of variants present (VARIANT_PAIRS) x metric (COMPARED) with at
    least one pair of runs. (None has no PreciseBN: its pairs with that metric have none.)"""
    runs = comparable_runs(summary)
    claims = []
    for a, b in VARIANT_PAIRS:
        for metric in COMPARED:
            d = paired_differences(runs, "variant", b, a, metric)  # metric(a) - metric(b) for (b, a)
            if len(d):
                claims.append(Claim(COMPARISON, "variant", a, b, metric, "", d))
    return claims


def comparison_table(claims: pd.DataFrame) -> pd.DataFrame:
    """comparisons.csv from the report's decided claims (claims.decide): its COMPARISON rows."""
    return claims.loc[claims["family"] == COMPARISON, COLUMNS].reset_index(drop=True)
