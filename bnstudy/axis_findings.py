"""Findings about the axes a study varies beside the variant: does BatchNorm's momentum
change the eval-mode swings, and does the before/after verdict depend on the activation?

Each answer rests on paired contrasts (bnstudy.contrasts): runs that differ in the one
setting only, seed included, with a bootstrap interval; a difference is claimed only when
the interval excludes 0.
"""

from __future__ import annotations

import pandas as pd

from bnstudy.contrasts import Contrast, compare
from bnstudy.variants import BN_VARIANTS
from bnstudy.wording import join_words, pct, pp, value_text

NO_CLEAR = "no clear difference at this many seeds"


def contrast_text(c: Contrast, higher: str = "higher", lower: str = "lower") -> str:
    """ "+1.2 pp (95% interval +0.4 to +2.0 pp; higher in 7 of 8 pairs)"."""
    if c.n == 0:
        return "not measured (no pairs)"
    most, word = (c.above, higher) if c.above >= c.below else (c.below, lower)
    return (f"{100 * c.mean:+.1f} pp (95% interval {100 * c.low:+.1f} to {100 * c.high:+.1f} pp; {word} in {most} of "
            f"{c.n} pairs)")  # fmt: skip


def varies(summary: pd.DataFrame, key: str) -> bool:
    return summary[key].nunique() > 1


# ---------------------------------------------------------------- BN momentum
def momentum_findings(summary: pd.DataFrame) -> list[str]:
    """Per BN variant: the eval-mode volatility at each momentum, and whether it changes from
    the smallest momentum to the largest (paired runs); the PreciseBN volatility beside it
    tells whether the running statistics or the weights carry the change. [] when the
    study does not vary bn_momentum."""
    bn = summary[summary["variant"].isin(BN_VARIANTS) & (summary["epochs_used"] > 1)]
    if bn.empty or not varies(bn, "bn_momentum"):
        return []
    sentences = []
    for variant, runs in bn.groupby("variant", observed=True):
        momenta = sorted(runs["bn_momentum"].unique())
        if len(momenta) < 2:
            continue
        low, high = momenta[0], momenta[-1]
        means = runs.groupby("bn_momentum")[["mean_abs_change", "mean_abs_change_precise_bn"]].mean()
        levels = join_words([f"{pp(means.loc[m, 'mean_abs_change'])} at {value_text('bn_momentum', m)}" for m in momenta])
        precise = ", ".join(f"{100 * means.loc[m, 'mean_abs_change_precise_bn']:.1f}" for m in momenta)
        eval_mode = compare(runs, "bn_momentum", low, high, "mean_abs_change")
        drop = compare(runs, "bn_momentum", low, high, "worst_drop")
        with_precise = compare(runs, "bn_momentum", low, high, "mean_abs_change_precise_bn")
        sentences.append(
            f"For {variant}, the mean |change| of eval-mode test accuracy is {levels} (BN momentum; PreciseBN at the "
            f"same momenta: {precise} pp). From momentum {value_text('bn_momentum', low)} to "
            f"{value_text('bn_momentum', high)} the mean |change| changes by {contrast_text(eval_mode)} and the worst "
            f"drop by {contrast_text(drop)}: {momentum_verdict(eval_mode, with_precise)}.")  # fmt: skip
    return sentences


def momentum_verdict(eval_mode: Contrast, with_precise: Contrast) -> str:
    """Whether momentum changes the eval-mode swings, and whether PreciseBN's volatility
    moves with it (then the weights, not the running average, changed)."""
    if not eval_mode.clear:
        return f"{NO_CLEAR} in the eval-mode swings"
    way = "larger" if eval_mode.direction > 0 else "smaller"
    if with_precise.direction == eval_mode.direction:
        return (f"a larger momentum makes the eval-mode swings {way}, and PreciseBN's swings move the same way, so "
                f"the trained weights change too, not only the running statistics")  # fmt: skip
    return (f"a larger momentum makes the eval-mode swings {way} while PreciseBN's do not move clearly, so the "
            f"running statistics carry the difference")  # fmt: skip


# ---------------------------------------------------------------- activation
def activation_findings(summary: pd.DataFrame) -> list[str]:
    """Per activation: bn_before minus bn_after in mean |change| and worst drop (paired
    runs), the final accuracies of the variants, and whether the before/after verdict is
    the same for every activation. [] when the study does not vary the activation or
    lacks one of the two BN variants."""
    runs = summary[summary["epochs_used"] > 1]
    if runs.empty or not varies(runs, "activation") or not set(BN_VARIANTS) <= set(runs["variant"].astype(str)):
        return []
    verdicts, sentences = {}, []
    for activation, block in runs.groupby("activation", observed=True):
        change = compare(block, "variant", "bn_after", "bn_before", "mean_abs_change")
        drop = compare(block, "variant", "bn_after", "bn_before", "worst_drop")
        finals = block.groupby("variant", observed=True)["final_acc"].mean()
        verdicts[activation] = change.direction
        sentences.append(
            f"With {activation}, bn_before minus bn_after: mean |change| {contrast_text(change)}, worst drop "
            f"{contrast_text(drop)}; final test accuracy {join_words([f'{pct(a)} for {v}' for v, a in finals.items()])}"
            f".")  # fmt: skip
    sentences.append(activation_verdict(verdicts))
    return sentences


def activation_verdict(directions: dict[str, int]) -> str:
    """One sentence from each activation's direction of bn_before minus bn_after in mean
    |change| (+1: bn_before swings more, -1: less, 0: no clear difference)."""
    words = {1: "bn_before swings more than bn_after", -1: "bn_before swings less than bn_after", 0: NO_CLEAR}
    if len(set(directions.values())) == 1:
        (direction,) = set(directions.values())
        if direction == 0:
            return f"Between BN before and after the activation there is {NO_CLEAR} for any activation."
        return f"The before/after verdict does not depend on the activation: {words[direction]} with each of them."
    parts = join_words([f"with {activation}, {words[d]}" for activation, d in directions.items()])
    if {1, -1} <= set(directions.values()):
        return f"The before/after verdict depends on the activation: {parts}."
    clear = join_words([activation for activation, d in directions.items() if d])
    return f"The before/after verdict is clear only with {clear}: {parts}."


def axis_findings(summary: pd.DataFrame) -> list[str]:
    """The findings of this module that apply to the study (none when it varies neither axis)."""
    return [*momentum_findings(summary), *activation_findings(summary)]
