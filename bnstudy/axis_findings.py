"""Findings about the axes a study varies beside the variant: does BatchNorm's momentum
change the eval-mode falls, and does the before/after verdict depend on the activation?

Each answer rests on paired contrasts (bnstudy.contrasts): runs that differ in the one
setting only, seed included, with a bootstrap interval; a difference is claimed only when
the interval excludes 0.
"""

from __future__ import annotations

import pandas as pd

from bnstudy.contrasts import NO_CLEAR, Contrast, compare, interval_text, signed_pp
from bnstudy.variants import BN_VARIANTS
from bnstudy.wording import join_words, pct, pp, value_text



def contrast_text(c: Contrast, higher: str = "higher", lower: str = "lower") -> str:
    """ "+1.2 pp (95% interval +0.4 to +2.0 pp; higher in 7 of 8 pairs)"."""
    if c.n == 0:
        return "not measured (no pairs)"
    most, word = (c.above, higher) if c.above >= c.below else (c.below, lower)
    return f"{signed_pp(c.mean)} ({interval_text(c.low, c.high)}; {word} in {most} of {c.n} pairs)"


def varies(summary: pd.DataFrame, key: str) -> bool:
    return summary[key].nunique() > 1


# ---------------------------------------------------------------- BN momentum
def momentum_findings(summary: pd.DataFrame) -> list[str]:
    """Per BN variant: the eval-mode worst drop and mean |change| at each momentum, and
    whether they change from the smallest momentum to the largest (paired runs). The
    verdict rests on the worst drop, a fall below an earlier best: mean |change| also
    counts rises, and a small momentum's running statistics lag early training (they
    average about 2/momentum batches), which shows as a rise. PreciseBN's worst drop beside
    it tells whether the running statistics or the weights carry the change. [] when the
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
        means = runs.groupby("bn_momentum")[["worst_drop", "mean_abs_change", "worst_drop_precise_bn"]].mean()

        def levels(metric: str) -> str:
            return join_words([f"{pp(means.loc[m, metric])} at {value_text('bn_momentum', m)}" for m in momenta])

        drop, change, precise = (compare(runs, "bn_momentum", low, high, metric)
                                 for metric in ("worst_drop", "mean_abs_change", "worst_drop_precise_bn"))  # fmt: skip
        sentences.append(
            f"For {variant}, the worst drop of eval-mode test accuracy is {levels('worst_drop')} (BN momentum), "
            f"its mean |change|, rises included, {levels('mean_abs_change')}, and PreciseBN's worst drop "
            f"{levels('worst_drop_precise_bn')}. From momentum {value_text('bn_momentum', low)} to "
            f"{value_text('bn_momentum', high)} the worst drop changes by {contrast_text(drop)} and the mean |change| "
            f"by {contrast_text(change)}: {momentum_verdict(drop, precise)}.")  # fmt: skip
    return sentences


def momentum_verdict(eval_mode: Contrast, with_precise: Contrast) -> str:
    """Whether momentum changes the eval-mode falls (worst drop), and whether PreciseBN's
    move with them (then the weights, not the running average, changed)."""
    if not eval_mode.clear:
        return f"{NO_CLEAR} in the eval-mode falls"
    way = "larger" if eval_mode.direction > 0 else "smaller"
    if with_precise.direction == eval_mode.direction:
        return (f"a larger momentum makes the eval-mode falls {way}, and PreciseBN's falls move the same way, so "
                f"the trained weights change too, not only the running statistics")  # fmt: skip
    return (f"a larger momentum makes the eval-mode falls {way} while PreciseBN's do not move clearly, so the "
            f"running statistics carry the difference")  # fmt: skip


# ---------------------------------------------------------------- activation
def activation_findings(summary: pd.DataFrame) -> list[str]:
    """Per activation: bn_before minus bn_after in mean |change| and worst drop (paired
    runs), the final accuracies of the variants, and whether the before/after verdict (on
    the worst drop: falls, not rises) is the same for every activation. [] when the study does not vary the activation or
    lacks one of the two BN variants."""
    runs = summary[summary["epochs_used"] > 1]
    if runs.empty or not varies(runs, "activation") or not set(BN_VARIANTS) <= set(runs["variant"].astype(str)):
        return []
    verdicts, sentences = {}, []
    for activation, block in runs.groupby("activation", observed=True):
        change = compare(block, "variant", "bn_after", "bn_before", "mean_abs_change")
        drop = compare(block, "variant", "bn_after", "bn_before", "worst_drop")
        finals = block.groupby("variant", observed=True)["final_acc"].mean()
        verdicts[activation] = drop.direction
        sentences.append(
            f"With {activation}, bn_before minus bn_after: mean |change| {contrast_text(change)}, worst drop "
            f"{contrast_text(drop)}; final test accuracy {join_words([f'{pct(a)} for {v}' for v, a in finals.items()])}"
            f".")  # fmt: skip
    sentences.append(activation_verdict(verdicts))
    return sentences


def activation_verdict(directions: dict[str, int]) -> str:
    """One sentence from each activation's direction of bn_before minus bn_after in worst
    drop (+1: bn_before falls further, -1: less far, 0: no clear difference)."""
    words = {1: "bn_before's test accuracy falls further than bn_after's",
             -1: "bn_before's test accuracy falls less far than bn_after's", 0: NO_CLEAR}  # fmt: skip
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
