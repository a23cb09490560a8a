"""Which remedy removes BatchNorm's swings, and at what price: claims for a study whose
arms change one BN setting of bn_before at a time (experiments/remedies.toml).

The baseline is bn_before with every remedy setting at its default (BatchNorm, momentum
0.1, no ghost batches, no frozen epochs). A remedy is a value of one REMEDY_AXES setting
with the others at their defaults; its runs pair with the baseline's by seed (and every
other setting). Per remedy, as claims (bnstudy.stats.claims, decided with the report's others):
- the eval-mode worst drop, remedy minus baseline: does it remove the swings?
- the final and the best test accuracy, remedy minus baseline: the price;
- the remedy's eval-mode worst drop minus the baseline's PreciseBN worst drop: is it as
  steady as re-estimated statistics on plain BN? (no clear difference is not "as steady":
  the report says what the pairs can detect);
and the pooling confound: bn_before minus none in final accuracy with max pooling and with
average pooling, and how much of the gain remains with average pooling.
"""

from __future__ import annotations

import pandas as pd

from bnstudy.stats.claims import Claim
from bnstudy.report.comparisons import comparable_runs
from bnstudy.stats.contrasts import paired_differences
from bnstudy.config.settings import BY_NAME
from bnstudy.report.wording import value_text

REMEDY, POOLING = "remedy", "pooling"  # the claims' families
REMEDY_AXES = ("norm", "bn_momentum", "ghost_batch_size", "frozen_bn_epochs")
BASELINE_NAME = "bn_before (BatchNorm)"
STEADY = "steady"  # a column of the frame remedy_claims builds: what "as steady as PreciseBN" compares


def default(axis: str):
    return BY_NAME[axis].default


ARM_AXES = ("norm", "ghost_batch_size", "frozen_bn_epochs", "pool")  # what only a remedies study varies


def is_remedies_study(summary: pd.DataFrame) -> bool:
    """Whether the study varies a remedy beyond BN momentum (which the momentum study varies
    alone, and axis_findings answers there)."""
    return any(a in summary.columns and summary[a].nunique() > 1 for a in ARM_AXES)


def present_axes(summary: pd.DataFrame) -> list[str]:
    """The REMEDY_AXES this build of bnstudy declares and the study varies."""
    return [a for a in REMEDY_AXES if a in summary.columns and summary[a].nunique() > 1]


def at_defaults(runs: pd.DataFrame, axes: list[str], but: str | None = None) -> pd.Series:
    """(rows,) bool: the runs with every axis of `axes` except `but` at its default."""
    keep = pd.Series(True, index=runs.index)
    for axis in axes:
        if axis != but:
            keep &= runs[axis] == default(axis)
    return keep


def remedy_label(axis: str, value) -> str:
    """ "norm group", "BN momentum 0.3": how a remedy is named."""
    return f"{BY_NAME[axis].words} {value_text(axis, value)}"


def remedy_claims(summary: pd.DataFrame) -> list[Claim]:
    """The per-remedy claims (module docstring) of the learning bn_before runs at max
    pooling; [] unless it is a remedies study (is_remedies_study)."""
    if not is_remedies_study(summary):
        return []
    runs = comparable_runs(summary)
    runs = runs[runs["variant"] == "bn_before"]
    if "pool" in runs.columns:
        runs = runs[runs["pool"] == default("pool")]
    axes = present_axes(runs)
    claims = []
    for axis in axes:
        arm = runs[at_defaults(runs, axes, but=axis)]
        base = default(axis)
        for value in sorted(v for v in arm[axis].unique() if v != base):
            name = remedy_label(axis, value)
            for metric in ("worst_drop", "final_acc", "best_acc"):
                claims.append(Claim(REMEDY, axis, name, BASELINE_NAME, metric, "",
                                    paired_differences(arm, axis, base, value, metric)))  # fmt: skip
            # the remedy's eval-mode curve against the baseline's PreciseBN one, paired as above
            steady = arm.assign(**{STEADY: arm["worst_drop"].where(arm[axis] != base, arm["worst_drop_precise_bn"])})
            claims.append(Claim(REMEDY, axis, name, f"{BASELINE_NAME} with PreciseBN", "worst_drop", "",
                                paired_differences(steady, axis, base, value, STEADY)))  # fmt: skip
    return claims


def pooling_claims(summary: pd.DataFrame) -> list[Claim]:
    """bn_before minus none in final accuracy at each pooling, and the difference of those
    gains (average minus max pooling, paired by seed); [] without both poolings."""
    if "pool" not in summary.columns or summary["pool"].nunique() < 2:
        return []
    runs = comparable_runs(summary)
    runs = runs[at_defaults(runs, present_axes(runs))]
    gains, claims = {}, []
    for pool in sorted(runs["pool"].unique()):
        d = paired_differences(runs[runs["pool"] == pool], "variant", "none", "bn_before", "final_acc")
        gains[pool] = d
        claims.append(Claim(POOLING, "variant", "bn_before", "none", "final_acc", f"pool {pool}", d))
    if {"max", "avg"} <= gains.keys():
        both = pd.concat({"avg": gains["avg"], "max": gains["max"]}, axis=1, join="inner")
        d = (both["avg"] - both["max"]).dropna()
        claims.append(Claim(POOLING, "pool", "gain with avg pooling", "gain with max pooling", "final_acc", "", d))
    return claims


def time_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Training seconds per epoch, mean over runs, per arm of bn_before (baseline first,
    then each remedy) and per pooling of none and bn_before: columns arm, runs, seconds."""
    runs = summary[summary["epochs_used"] > 0]
    per_epoch = runs["train_seconds"] / runs["epochs_used"]
    axes = present_axes(runs)
    rows = []
    bn = runs["variant"] == "bn_before"
    pool_default = runs["pool"] == default("pool") if "pool" in runs.columns else True
    base = bn & at_defaults(runs, axes) & pool_default
    rows.append((BASELINE_NAME, int(base.sum()), per_epoch[base].mean()))
    for axis in axes:
        arm = bn & at_defaults(runs, axes, but=axis) & pool_default
        for value in sorted(v for v in runs.loc[arm, axis].unique() if v != default(axis)):
            chosen = arm & (runs[axis] == value)
            rows.append((remedy_label(axis, value), int(chosen.sum()), per_epoch[chosen].mean()))
    if "pool" in runs.columns and runs["pool"].nunique() > 1:
        for (variant, pool), block in per_epoch[at_defaults(runs, axes)].groupby([runs["variant"], runs["pool"]],
                                                                                  observed=True):  # fmt: skip
            rows.append((f"{variant}, {remedy_label('pool', pool)}", len(block), block.mean()))
    return pd.DataFrame(rows, columns=["arm", "runs", "seconds"]).dropna(subset=["seconds"])
