"""The report's findings: sentences computed from a study's tables. (The comparison with
the reference notebook's logs is bnstudy.notebook's.)"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bnstudy.aggregate import ALL_METRICS, STUCK_BELOW, drops
from bnstudy.comparisons import comparison_table, smallest_text
from bnstudy.variants import BN_VARIANTS
from bnstudy.wording import cell_text, extra_axes, join_words, pct, per_variant, plural, pp



def upward_share(epochs: pd.DataFrame) -> pd.Series:
    """Per variant: the fraction of all epoch-to-epoch |change| of test accuracy that is a
    rise (`epochs`: counted rows). mean_abs_change counts rises and falls alike."""
    ordered = epochs.sort_values(["run_id", "epoch"])
    change = ordered.groupby("run_id")["test_acc"].diff()
    frame = pd.DataFrame({"variant": ordered["variant"], "up": change.clip(lower=0), "abs": change.abs()})
    sums = frame.groupby("variant", observed=True)[["up", "abs"]].sum()
    return (sums["up"] / sums["abs"]).where(sums["abs"] > 0)


# An upward share this high (rises three times the falls) marks a variant still learning:
# its small worst drop says little about stability, as it has not yet had a peak to fall from.
STILL_LEARNING = 0.75


def steadiest_text(means: pd.Series, up: pd.Series, table: pd.DataFrame) -> str:
    """ "smallest for bn_after: clearly below ... (paired contrasts)", and a warning when
    that variant's upward share says it is still learning. `means`: mean worst drop per
    variant; `up`: upward share per variant; `table`: comparisons.comparison_table."""
    steadiest = means.idxmin()
    others = [v for v in means.dropna().index if v != steadiest]
    text = f"smallest for {steadiest}"
    if others:
        text += f"; paired by cell and seed, {steadiest}'s is {smallest_text(table, steadiest, others, 'worst_drop')}"
    if up.get(steadiest, 0) >= STILL_LEARNING:
        text += (f"; but {steadiest}'s test accuracy mostly rises (upward share {up[steadiest]:.0%}): it is still "
                 f"learning, so its small worst drop does not show that it is stable")  # fmt: skip
    return text


def variant_findings(cells: pd.DataFrame, epochs: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """How the variants compare, averaged over their cells (`cells`: cells with runs;
    `epochs`: the counted rows of runs not stuck; `table`: comparisons.comparison_table)."""
    means = cells.groupby("variant", observed=True)[["mean_abs_change_mean", "worst_drop_mean", "gen_gap_mean"]].mean()
    up = upward_share(epochs).dropna()
    sentences = [
        f"Averaged over their grid cells, the worst drop of test accuracy below an earlier best is "
        f"{per_variant(means['worst_drop_mean'], pp)}, {steadiest_text(means['worst_drop_mean'], up, table)}.",
        f"The train-minus-test gap at the last epoch (gen_gap) averages {per_variant(means['gen_gap_mean'], pp)}.",
    ]
    if means["mean_abs_change_mean"].notna().any():  # needs two epochs
        sentences.insert(0, f"Averaged over their grid cells, the mean |change| of test accuracy from one epoch to "
                            f"the next is {per_variant(means['mean_abs_change_mean'], pp)}.")  # fmt: skip
    if len(up):
        mostly = ("learning progress rather than instability" if (up > 0.5).all() else
                  "falls, that is instability" if (up < 0.5).all() else
                  "gains for some variants and falls for others")  # fmt: skip
        sentences.append(f"Mean |change| counts gains and falls alike; its upward share is "
                         f"{per_variant(up, '{:.0%}'.format)}, so here it mostly measures {mostly}.")  # fmt: skip
    return sentences


def largest_drop_finding(summary: pd.DataFrame, epochs: pd.DataFrame, extra: list[str]) -> str:
    """The run with the largest worst drop, where its accuracy peaked and where it fell to."""
    worst = summary.loc[summary["worst_drop"].idxmax()]
    if not worst["worst_drop"] > 0:
        return "No run's test accuracy ever fell below an earlier best."
    run = epochs[epochs["run_id"] == worst["run_id"]].sort_values("epoch")
    acc, epoch = run["test_acc"].to_numpy(), run["epoch"].to_numpy()
    fall = int(np.argmax(drops(acc))) + 1
    peak = int(np.argmax(acc[:fall]))
    return (f"The largest worst drop of any run is {pp(worst['worst_drop'])}: {cell_text(worst, extra)}, seed "
            f"{worst['seed']}, fell from {pct(acc[peak])} at epoch {epoch[peak]} to {pct(acc[fall])} at epoch "
            f"{epoch[fall]}.")  # fmt: skip


def cell_findings(cells: pd.DataFrame, extra: list[str]) -> list[str]:
    """The extreme cells: largest mean worst drop and mean |change|, best and worst final
    accuracy, largest spread over seeds (`cells`: cells with runs)."""
    best, worst = cells.loc[cells["final_acc_mean"].idxmax()], cells.loc[cells["final_acc_mean"].idxmin()]
    sentences = [f"The best final test accuracy is {pct(best['final_acc_mean'])} ({cell_text(best, extra)}), "
                 f"the worst {pct(worst['final_acc_mean'])} ({cell_text(worst, extra)})."]  # fmt: skip
    if cells["worst_drop_mean"].notna().any():  # NaN where every run is stuck
        drop = cells.loc[cells["worst_drop_mean"].idxmax()]
        never = int((cells["worst_drop_mean"] == 0).sum())
        sentences.insert(0, f"By cell (mean over seeds), the largest worst drop is {pp(drop['worst_drop_mean'])} "
                            f"({cell_text(drop, extra)}); cells whose accuracy never drops in any seed: {never} of "
                            f"{len(cells)}.")  # fmt: skip
    if cells["mean_abs_change_mean"].notna().any():  # needs two epochs
        change = cells.loc[cells["mean_abs_change_mean"].idxmax()]
        sentences.insert(1, f"The largest mean |change| of a cell is {pp(change['mean_abs_change_mean'])} "
                            f"({cell_text(change, extra)}).")  # fmt: skip
    spread = cells["seed_std"].dropna()
    if len(spread):
        top = cells.loc[spread.idxmax()]
        sentences.append(f"Seeds disagree most for {cell_text(top, extra)}: the std of final accuracy over its "
                         f"{top['n']} seeds is {pp(top['seed_std'])} (median over cells: "
                         f"{pp(spread.median())}).")  # fmt: skip
    return sentences


def removal_text(name: str, before: float, after: float) -> tuple[str, float]:
    """("removes 80% of the {name}" | "adds 25% to the {name}" | "has no {name} to remove",
    the fraction of `before` that `after` removes, NaN when `before` is 0)."""
    if not before > 0:
        return f"has no {name} to remove", math.nan
    share = 1 - after / before
    return (f"removes {share:.0%} of the {name}" if share >= 0 else f"adds {-share:.0%} to the {name}"), share


def precise_bn_findings(summary: pd.DataFrame) -> list[str]:
    """Per BN variant: how PreciseBN and test-batch statistics change the volatility, and
    whether PreciseBN removes most of it (mean |change| and worst drop both at least halved)."""
    sentences = []
    for variant, runs in summary[summary["variant"].isin(BN_VARIANTS)].groupby("variant", observed=True):
        m = runs[ALL_METRICS].mean()
        named = (("mean |change|", "mean_abs_change"), ("worst drop", "worst_drop"))
        texts, shares = zip(*(removal_text(name, m[metric], m[f"{metric}_precise_bn"]) for name, metric in named))
        shares = [s for s in shares if not math.isnan(s)]
        verdict = ("most of the instability comes from the running statistics" if shares and min(shares) >= 0.5 else
                   "the running statistics cause part of the instability" if any(s > 0 for s in shares) else
                   "the running statistics do not cause the instability")  # fmt: skip
        sentences.append(
            f"For {variant} ({plural(len(runs), 'run')}), PreciseBN statistics instead of the running ones take the "
            f"mean |change| from {pp(m['mean_abs_change'])} to {pp(m['mean_abs_change_precise_bn'])} and the worst drop from "
            f"{pp(m['worst_drop'])} to {pp(m['worst_drop_precise_bn'])} (test-batch statistics: "
            f"{pp(m['mean_abs_change_batch_stats'])} and {pp(m['worst_drop_batch_stats'])}) and move test accuracy by "
            f"{m['ema_gap'] * 100:+.1f} pp on average (ema_gap): PreciseBN {join_words(list(texts))}, "
            f"so {verdict}.")  # fmt: skip
    return sentences


def stuck_finding(summary: pd.DataFrame, extra: list[str]) -> list[str]:
    """The runs stuck at chance, in one sentence; none when no run is stuck."""
    stuck = summary[summary["stuck"]]
    if stuck.empty:
        return []
    runs = "; ".join(f"{cell_text(r, extra)}, seed {r['seed']}" for _, r in stuck.iterrows())
    verb = "is" if len(stuck) == 1 else "are"
    return [f"{len(stuck)} of {plural(len(summary), 'run')} {verb} stuck at chance (best test accuracy below "
            f"{pct(STUCK_BELOW)}) and {verb} left out of the volatility averages and comparisons: {runs}."]  # fmt: skip


def divergence_finding(summary: pd.DataFrame, extra: list[str]) -> str:
    """Which runs diverged (their loss turned non-finite), if any."""
    diverged = summary[summary["diverged"]]
    if diverged.empty:
        return f"No run diverged ({plural(len(summary), 'run')})."
    runs = [f"{cell_text(r, extra)}, seed {r['seed']} (after {r['epochs_used']} finite epochs)"
            for _, r in diverged.iterrows()]  # fmt: skip
    return f"{len(diverged)} of {len(summary)} runs diverged: {'; '.join(runs)}."


def findings(summary: pd.DataFrame, cells: pd.DataFrame, epochs: pd.DataFrame) -> list[str]:
    """The report's findings, each sentence computed from this study's numbers (`epochs`: counted rows)."""
    extra = extra_axes(cells)
    measured = summary[summary["epochs_used"] > 0]  # runs that diverged in epoch 1 have no metrics
    if measured.empty:
        return [divergence_finding(summary, extra)]
    done = cells[cells["final_acc_mean"].notna()]
    # Runs stuck at chance stay out of every statement about volatility (aggregate.stuck).
    learning = measured[~measured["stuck"]]
    volatility = [*variant_findings(done, epochs[epochs["run_id"].isin(learning["run_id"])], comparison_table(summary)),
                  largest_drop_finding(learning, epochs, extra)] if len(learning) else []  # fmt: skip
    return [
        *volatility,
        *cell_findings(done, extra),
        *precise_bn_findings(learning),
        *stuck_finding(summary, extra),
        divergence_finding(summary, extra),
    ]
