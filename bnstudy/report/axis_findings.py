"""Findings about the axes a study varies beside the variant: does BatchNorm's momentum
change the eval-mode falls, and does the before/after verdict depend on the activation?

Each answer rests on claims (bnstudy.stats.claims): paired contrasts of runs that differ in the
one setting only, seed included, decided with the report's other claims. The verdicts
rest on the worst drop, a fall below an earlier best: mean |change| also counts rises, and
a small momentum's running statistics lag early training (they average about 2/momentum
batches), which shows as a rise.
"""

from __future__ import annotations

import pandas as pd

from bnstudy.stats.claims import Claim, Verdict
from bnstudy.report.comparisons import comparable_runs
from bnstudy.stats.contrasts import paired_differences
from bnstudy.report.remedies import is_remedies_study
from bnstudy.config.variants import BN_VARIANTS
from bnstudy.report.wording import contrast_text, join_words, value_text, verdict_text

MOMENTUM, ACTIVATION = "momentum", "activation"  # the claims' families


def varies(summary: pd.DataFrame, key: str) -> bool:
    return summary[key].nunique() > 1


# ---------------------------------------------------------------- BN momentum
def momentum_claims(summary: pd.DataFrame) -> list[Claim]:
    """Per BN variant with two momenta or more: the worst drop and PreciseBN's worst drop at
    the largest momentum minus at the smallest (paired runs); [] when the study does not
    vary bn_momentum, or varies it as one remedy among others (bnstudy.report.remedies claims it
    there). PreciseBN's beside the eval mode's tells whether the running statistics or the
    weights carry a change."""
    if is_remedies_study(summary):
        return []
    bn = comparable_runs(summary)
    bn = bn[bn["variant"].isin(BN_VARIANTS)]
    if bn.empty or not varies(bn, "bn_momentum"):
        return []
    claims = []
    for variant, runs in bn.groupby("variant", observed=True):
        momenta = sorted(runs["bn_momentum"].unique())
        if len(momenta) < 2:
            continue
        low, high = momenta[0], momenta[-1]
        for metric in ("worst_drop", "worst_drop_precise_bn"):
            d = paired_differences(runs, "bn_momentum", low, high, metric)
            claims.append(Claim(MOMENTUM, "bn_momentum", value_text("bn_momentum", high),
                                value_text("bn_momentum", low), metric, f"variant {variant}", d))  # fmt: skip
    return claims


def momentum_sentence(eval_row: pd.Series, precise_row: pd.Series) -> str:
    """One BN variant's momentum answer from its two claims.csv rows."""
    variant = eval_row["scope"].removeprefix("variant ")
    head = (f"{variant}: from BN momentum {eval_row['b']} to {eval_row['a']} the worst drop changes by "
            f"{contrast_text(eval_row)}")  # fmt: skip
    verdict = Verdict(eval_row["verdict"])
    if not verdict.clear:
        return f"{head}: {verdict_text(eval_row)}."
    way = "larger" if verdict is Verdict.HIGHER else "smaller"
    carried = ("PreciseBN's falls move the same way, so the weights change too"
               if precise_row["verdict"] == eval_row["verdict"] else
               "PreciseBN's do not move clearly, so the running statistics carry it")  # fmt: skip
    return f"{head}: a larger momentum makes the falls {way}; {carried}."


def momentum_findings(claims: pd.DataFrame) -> list[str]:
    """One sentence per BN variant from the report's MOMENTUM claims."""
    rows = claims[claims["family"] == MOMENTUM]
    return [momentum_sentence(block.iloc[0], block.iloc[1]) for _, block in rows.groupby("scope", sort=False)]


# ---------------------------------------------------------------- activation
def activation_claims(summary: pd.DataFrame) -> list[Claim]:
    """Per activation: bn_before minus bn_after in worst drop (paired runs); [] when the
    study does not vary the activation or lacks one of the two BN variants."""
    runs = comparable_runs(summary)
    if runs.empty or not varies(runs, "activation") or not set(BN_VARIANTS) <= set(runs["variant"].astype(str)):
        return []
    return [Claim(ACTIVATION, "variant", "bn_before", "bn_after", "worst_drop", f"activation {activation}",
                  paired_differences(block, "variant", "bn_after", "bn_before", "worst_drop"))
            for activation, block in runs.groupby("activation", observed=True)]  # fmt: skip


def activation_findings(claims: pd.DataFrame) -> list[str]:
    """Per activation, bn_before minus bn_after in worst drop, then whether the verdict is
    the same for every activation; from the report's ACTIVATION claims."""
    rows = claims[claims["family"] == ACTIVATION]
    if rows.empty:
        return []
    sentences = [f"With {row['scope'].removeprefix('activation ')}, bn_before minus bn_after worst drop "
                 f"{contrast_text(row)}: {verdict_text(row)}." for _, row in rows.iterrows()]  # fmt: skip
    verdicts = {row["scope"].removeprefix("activation "): Verdict(row["verdict"]) for _, row in rows.iterrows()}
    return sentences + [activation_verdict(verdicts)]


def activation_verdict(verdicts: dict[str, Verdict]) -> str:
    """One sentence from each activation's verdict of bn_before minus bn_after worst drop."""
    words = {Verdict.HIGHER: "bn_before falls further", Verdict.LOWER: "bn_before falls less far"}
    clear = {a: v for a, v in verdicts.items() if v.clear}
    if not clear:
        return "For no activation is the before/after difference clear."
    if len(clear) == len(verdicts) and len(set(clear.values())) == 1:
        return f"The before/after verdict holds for every activation: {words[next(iter(clear.values()))]}."
    parts = join_words([f"{a} ({words[v]})" for a, v in clear.items()])
    return f"The before/after verdict is clear only with {parts}."


def axis_claims(summary: pd.DataFrame) -> list[Claim]:
    """The claims of this module that apply to the study (none when it varies neither axis)."""
    return [*momentum_claims(summary), *activation_claims(summary)]
