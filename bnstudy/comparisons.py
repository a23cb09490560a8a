"""Paired comparisons between the variants: for each pair of variants and each stability
metric, metric(a) - metric(b) over the runs that differ in the variant only (same cell,
same seed), with a bootstrap 95% interval and a sign count (bnstudy.contrasts).

Runs stuck at chance and runs with fewer than two counted epochs are left out of the
pairs: a flat curve at 10% would pass as perfect stability, and one epoch has no swing.
A difference is claimed only when its interval excludes 0 (Contrast.clear); otherwise the
words are "no clear difference at this many seeds". The table is comparisons.csv.
"""

from __future__ import annotations

import pandas as pd

from bnstudy.contrasts import MIN_PAIRS, NO_CLEAR, Contrast, compare, interval_text, signed_pp
from bnstudy.wording import join_words

# (a, b): each row is a minus b, so "bn_before above none" reads as the row's sign.
VARIANT_PAIRS = [("bn_before", "none"), ("bn_after", "none"), ("bn_before", "bn_after")]
# metric: its name in sentences and the figure
METRICS = {
    "mean_abs_change": "mean |change|",
    "worst_drop": "worst drop",
    "late_std": "late std",
    "final_acc": "final accuracy",
    "worst_drop_precise_bn": "PreciseBN worst drop",
}
COLUMNS = ["a", "b", "metric", "n_pairs", "mean", "low", "high", "above", "below", "verdict"]


def comparable_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The runs of summary.csv that may pair: not stuck, two counted epochs or more."""
    return summary[~summary["stuck"] & (summary["epochs_used"] > 1)]


def verdict(c: Contrast, a: str, b: str) -> str:
    """ "bn_before higher than none", "... lower than ...", or NO_CLEAR (also for too few pairs)."""
    if not c.clear:
        return NO_CLEAR
    return f"{a} {'higher' if c.direction > 0 else 'lower'} than {b}"


def comparison_table(summary: pd.DataFrame) -> pd.DataFrame:
    """comparisons.csv: one row per pair of variants present (VARIANT_PAIRS) x metric
    (METRICS) with at least one pair of runs: a, b, metric, n_pairs, mean, low, high (of
    metric(a) - metric(b), fractions), above and below (pairs where a is above / below b),
    verdict. (None has no PreciseBN: its pairs with that metric have no rows.)"""
    runs = comparable_runs(summary)
    rows = []
    for a, b in VARIANT_PAIRS:
        for metric in METRICS:
            c = compare(runs, "variant", b, a, metric)  # compare gives metric(a) - metric(b) for (b, a)
            if c.n:
                rows.append([a, b, metric, c.n, c.mean, c.low, c.high, c.above, c.below, verdict(c, a, b)])
    return pd.DataFrame(rows, columns=COLUMNS)


def as_contrast(row) -> Contrast:
    """The Contrast a comparisons.csv row holds."""
    return Contrast(int(row["n_pairs"]), row["mean"], row["low"], row["high"], int(row["above"]), int(row["below"]))


def difference_text(row) -> str:
    """ "+1.2 pp (95% interval +0.4 to +2.0 pp; bn_before above none in 11, below in 1 of 12 pairs)"."""
    return (f"{signed_pp(row['mean'])} ({interval_text(row['low'], row['high'])}; {row['a']} above {row['b']} in "
            f"{row['above']}, below in {row['below']} of {row['n_pairs']} pairs)")  # fmt: skip


def pair_sentence(rows: pd.DataFrame) -> str:
    """One pair of variants (rows of comparison_table with one a and b) in one sentence:
    each metric's difference and verdict."""
    a, b = rows["a"].iloc[0], rows["b"].iloc[0]
    parts = [f"{METRICS[r['metric']]} {difference_text(r)}: {r['verdict']}" for _, r in rows.iterrows()]
    return f"{a} minus {b}, paired by cell and seed: " + "; ".join(parts) + "."


def comparison_findings(table: pd.DataFrame) -> list[str]:
    """One sentence per pair of variants in `table` (comparison_table), and how many pairs a
    claim needs; none for an empty table."""
    if table.empty:
        return []
    sentences = [pair_sentence(rows) for _, rows in table.groupby(["a", "b"], sort=False)]
    return sentences + [f"A difference is claimed only with {MIN_PAIRS} pairs or more and a 95% interval that "
                        f"excludes 0."]  # fmt: skip


def lookup(table: pd.DataFrame, x: str, y: str, metric: str) -> tuple[pd.Series, int] | None:
    """(the row of `table` comparing x with y on `metric`, +1 if it reads x minus y, -1 if y
    minus x), or None when the table has no such row."""
    for sign, (a, b) in ((1, (x, y)), (-1, (y, x))):
        found = table[(table["a"] == a) & (table["b"] == b) & (table["metric"] == metric)]
        if len(found):
            return found.iloc[0], sign
    return None


def oriented(row, sign: int) -> tuple[float, float, float]:
    """(mean, low, high) of a comparisons.csv row, as a minus b (sign +1) or b minus a (-1)."""
    return (row["mean"], row["low"], row["high"]) if sign > 0 else (-row["mean"], -row["high"], -row["low"])


def smallest_text(table: pd.DataFrame, smallest: str, others: list[str], metric: str) -> str:
    """How `smallest` (the variant with the smallest mean `metric`) stands against each of
    `others` in the paired contrasts: "clearly below bn_before (-2.1 pp, 95% interval -3.0
    to -1.2 pp over 12 pairs) and not clearly different from none (...)"."""
    parts = []
    for other in others:
        found = lookup(table, smallest, other, metric)
        if found is None:
            parts.append(f"not compared with {other} (no pairs)")
            continue
        row, sign = found
        mean, low, high = oriented(row, sign)
        c = as_contrast(row)
        # Averages over cells and paired means can disagree (unequal seeds, stuck runs left out).
        relation = ("not clearly different from" if not c.clear else
                    "clearly below" if sign * c.direction < 0 else "clearly above")  # fmt: skip
        parts.append(f"{relation} {other} ({signed_pp(mean)}, {interval_text(low, high)} over {c.n} pairs)")
    return join_words(parts)
