"""bnstudy.report.axis_findings on hand-made summaries whose answers are known: the claims'
values and verdicts, checked as data; one rendering test each."""

from __future__ import annotations

import pandas as pd
import pytest
from studies import cfg

from bnstudy.report import axis_findings
from bnstudy.results.aggregate import typed
from bnstudy.stats.claims import Verdict, decide

SEEDS = range(8)
NOISE = (0.001, -0.001, 0.002, -0.002, 0.0015, -0.0005, 0.0005, -0.0015)  # per seed: small next to the effects


def summary_of(rows: list[tuple[dict, dict]]) -> pd.DataFrame:
    """summary.csv-like rows, typed as the report types them: (settings for studies.cfg,
    metrics); epochs_used 4, none stuck."""
    return typed(pd.DataFrame([{**cfg(**settings).identity(), "epochs_used": 4, "stuck": False, **metrics}
                               for settings, metrics in rows]))  # fmt: skip


def momentum_study(effect: float, precise_effect: float = 0.0) -> pd.DataFrame:
    """bn_before and bn_after at momentum 0.01 and 0.3, 8 seeds: the eval-mode worst drop is
    0.03 at 0.01 and 0.03 + effect at 0.3; PreciseBN's worst drop 0.01, plus precise_effect at 0.3."""
    rows = []
    for variant in ("bn_before", "bn_after"):
        for momentum, scale in ((0.01, 0.0), (0.3, 1.0)):
            for seed, noise in zip(SEEDS, NOISE):
                rows.append((dict(variant=variant, bn_momentum=momentum, seed=seed),
                             dict(worst_drop=0.03 + scale * effect + noise * (1 + scale),
                                  worst_drop_precise_bn=0.01 + scale * (precise_effect + noise / 2))))  # fmt: skip
    return summary_of(rows)


def decided(summary: pd.DataFrame) -> pd.DataFrame:
    return decide(axis_findings.axis_claims(summary))


@pytest.mark.parametrize("effect, precise, verdict, precise_verdict", [
    (0.02, 0.0, Verdict.HIGHER, Verdict.UNCLEAR),
    (-0.02, -0.005, Verdict.LOWER, Verdict.LOWER),
    (0.0, 0.0, Verdict.NEGLIGIBLE, Verdict.UNCLEAR),  # the noise averages to 0
])  # fmt: skip
def test_momentum_claims(effect, precise, verdict, precise_verdict):
    table = decided(momentum_study(effect, precise))
    assert table["family"].unique().tolist() == [axis_findings.MOMENTUM]
    assert table["scope"].tolist() == ["variant bn_before"] * 2 + ["variant bn_after"] * 2
    assert (table["a"].unique().tolist(), table["b"].unique().tolist()) == (["0.3"], ["0.01"])
    eval_mode = table[table["metric"] == "worst_drop"]
    assert eval_mode["mean"].tolist() == pytest.approx([effect] * 2, abs=0.001)
    assert eval_mode["verdict"].tolist() == [verdict.value] * 2
    precise_rows = table[table["metric"] == "worst_drop_precise_bn"]
    if precise_verdict is not Verdict.UNCLEAR or precise == 0:
        assert set(precise_rows["verdict"]) <= {precise_verdict.value, Verdict.NEGLIGIBLE.value}


def test_a_momentum_sentence_is_rendered_from_its_claims():
    table = decided(momentum_study(0.02))
    (first, _) = axis_findings.momentum_findings(table)
    assert first.startswith("bn_before: from BN momentum 0.01 to 0.3 the worst drop changes by +2.0 pp")
    assert "running statistics carry it" in first


def test_no_momentum_claims_when_the_study_keeps_it_fixed():
    assert axis_findings.momentum_claims(momentum_study(0.02).query("bn_momentum == 0.3")) == []


def activation_study(before_minus_after: dict[str, float]) -> pd.DataFrame:
    """none, bn_before, bn_after per activation, 8 seeds: bn_after's worst drop is 0.02,
    bn_before's 0.02 + the activation's difference."""
    rows = []
    for activation, difference in before_minus_after.items():
        for seed, noise in zip(SEEDS, NOISE):
            for variant, drop in (("none", 0.05), ("bn_before", 0.02 + difference + noise), ("bn_after", 0.02)):
                rows.append((dict(variant=variant, activation=activation, seed=seed), dict(worst_drop=drop)))
    return summary_of(rows)


@pytest.mark.parametrize("differences, verdicts, sentence", [
    ({"sigmoid": 0.03, "relu": 0.02, "tanh": 0.04}, ["higher"] * 3,
     "holds for every activation: bn_before falls further"),
    ({"sigmoid": -0.03, "relu": -0.02, "tanh": -0.04}, ["lower"] * 3,
     "holds for every activation: bn_before falls less far"),
    ({"sigmoid": 0.03, "relu": -0.02, "tanh": 0.0}, ["higher", "lower", "difference rounds to 0"],
     "clear only with sigmoid"),
    ({"sigmoid": 0.0, "relu": 0.0, "tanh": 0.0}, ["difference rounds to 0"] * 3, "For no activation"),
])  # fmt: skip
def test_the_before_after_verdict_per_activation(differences, verdicts, sentence):
    table = decided(activation_study(differences))
    assert table["scope"].tolist() == ["activation sigmoid", "activation relu", "activation tanh"]
    assert table["mean"].tolist() == pytest.approx(list(differences.values()), abs=0.001)
    assert table["verdict"].tolist() == verdicts
    assert sentence in axis_findings.activation_findings(table)[-1]


def test_no_activation_claims_when_the_study_keeps_it_fixed():
    assert axis_findings.activation_claims(activation_study({"sigmoid": 0.03})) == []
