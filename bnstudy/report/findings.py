"""The report's findings beyond the variant comparisons: what the BN statistics do
(PreciseBN against the running statistics), and which runs were stuck or diverged, as
claims and small tables that bnstudy.report.render renders."""

from __future__ import annotations

import pandas as pd

from bnstudy.results.aggregate import STUCK_BELOW
from bnstudy.stats.claims import Claim
from bnstudy.report.comparisons import comparable_runs
from bnstudy.results.metrics import header
from bnstudy.config.variants import BN_VARIANTS
from bnstudy.report.wording import cell_text, join_words, pct, plural

PRECISE_BN = "precise_bn"  # the claims' family
# An upward share this high (rises three times the falls) marks a variant still learning:
# its small worst drop says little about stability, as it has not yet had a peak to fall from.
STILL_LEARNING = 0.75


# ---------------------------------------------------------------- BN statistics
def precise_bn_claims(summary: pd.DataFrame) -> list[Claim]:
    """Per BN variant: PreciseBN's worst drop minus the eval mode's (running statistics),
    paired within each run: the same weights, only the statistics differ."""
    claims = []
    runs = comparable_runs(summary)
    for variant, block in runs[runs["variant"].isin(BN_VARIANTS)].groupby("variant", observed=True):
        d = (block["worst_drop_precise_bn"] - block["worst_drop"]).set_axis(block["seed"]).dropna()
        if len(d):
            claims.append(Claim(PRECISE_BN, "statistics", "PreciseBN", "running statistics", "worst_drop",
                                f"variant {variant}", d))  # fmt: skip
    return claims


STATISTICS_METRICS = ["worst_drop", "worst_drop_precise_bn", "worst_drop_batch_stats", "mean_abs_change",
                      "mean_abs_change_precise_bn", "mean_abs_change_batch_stats", "ema_gap"]  # fmt: skip


def statistics_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per BN variant (rows): mean over the learning runs of each STATISTICS_METRICS (fractions)
    and `removed`, the share of the eval-mode worst drop that PreciseBN removes (NaN when
    there is none to remove); `runs`: how many runs."""
    runs = comparable_runs(summary)
    bn = runs[runs["variant"].isin(BN_VARIANTS)]
    if bn.empty:
        return pd.DataFrame(columns=["runs", *STATISTICS_METRICS, "removed"])
    table = bn.groupby("variant", observed=True)[STATISTICS_METRICS].mean()
    table.insert(0, "runs", bn.groupby("variant", observed=True).size())
    table["removed"] = (1 - table["worst_drop_precise_bn"] / table["worst_drop"]).where(table["worst_drop"] > 0)
    return table


def statistics_headers() -> dict[str, str]:
    """statistics_table's columns as report.md's table names them."""
    return {"runs": "runs", **{m: header(m) for m in STATISTICS_METRICS}, "removed": "PreciseBN removes"}


# ---------------------------------------------------------------- stuck and diverged runs
def grouped_runs(runs: pd.DataFrame, extra: list[str]) -> list[str]:
    """Runs named by cell, their seeds grouped: "none at learning rate 0.0001, batch size
    256: all 3 seeds" or "...: seeds 0 and 2 of 3". `runs`: summary rows with `n_seeds`,
    the seeds their cell has."""
    parts = []
    keys = ["variant", "lr", "batch_size", *extra]
    for _, cell in runs.groupby(keys, observed=True, sort=True):
        first = cell.iloc[0]
        seeds = sorted(cell["seed"])
        named = f"seed{'s' if len(seeds) > 1 else ''} {join_words([str(s) for s in seeds])}"
        which = (named if first["n_seeds"] == 1 else f"all {len(seeds)} seeds" if len(seeds) == first["n_seeds"] else
                 f"{named} of {first['n_seeds']}")  # fmt: skip
        parts.append(f"{cell_text(first, extra)}: {which}")
    return parts


def with_seed_counts(summary: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    keys = ["variant", "lr", "batch_size", *extra]
    return summary.assign(n_seeds=summary.groupby(keys, observed=True)["seed"].transform("count"))


def stuck_text(summary: pd.DataFrame, extra: list[str]) -> str | None:
    """The runs stuck at chance, grouped by cell, or None when none is."""
    counted = with_seed_counts(summary, extra)
    stuck = counted[counted["stuck"]]
    if stuck.empty:
        return None
    return (f"{len(stuck)} of {plural(len(summary), 'run')} stuck at chance (best test accuracy below "
            f"{pct(STUCK_BELOW)}), left out of the volatility numbers: "
            f"{'; '.join(grouped_runs(stuck, extra))}.")  # fmt: skip


def diverged_text(summary: pd.DataFrame, extra: list[str]) -> str:
    """Which runs diverged (their loss turned non-finite), grouped by cell."""
    counted = with_seed_counts(summary, extra)
    diverged = counted[counted["diverged"]]
    if diverged.empty:
        return f"No run diverged ({plural(len(summary), 'run')})."
    return f"{len(diverged)} of {len(summary)} runs diverged: {'; '.join(grouped_runs(diverged, extra))}."


# ---------------------------------------------------------------- still learning
def upward_share(epochs: pd.DataFrame) -> pd.Series:
    """Per variant: the fraction of all epoch-to-epoch |change| of test accuracy that is a
    rise (`epochs`: counted rows). mean_abs_change counts rises and falls alike."""
    ordered = epochs.sort_values(["run_id", "epoch"])
    change = ordered.groupby("run_id")["test_acc"].diff()
    frame = pd.DataFrame({"variant": ordered["variant"], "up": change.clip(lower=0), "abs": change.abs()})
    sums = frame.groupby("variant", observed=True)[["up", "abs"]].sum()
    return (sums["up"] / sums["abs"]).where(sums["abs"] > 0)


def still_learning_text(epochs: pd.DataFrame) -> str | None:
    """The variants whose test accuracy mostly rises (upward share >= STILL_LEARNING), in
    one sentence, or None: a small worst drop there does not show that they are stable.
    `epochs`: the counted rows of the learning runs."""
    up = upward_share(epochs).dropna()
    rising = [str(v) for v, share in up.items() if share >= STILL_LEARNING]
    if not rising:
        return None
    shares = join_words([f"{v} ({up[v]:.0%})" for v in rising])
    return (f"Still learning: rises are most of the epoch-to-epoch changes of {shares}, so a small worst drop "
            f"there does not show stability.")  # fmt: skip
