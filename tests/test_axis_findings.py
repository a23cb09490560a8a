"""bnstudy.axis_findings on hand-made summaries whose answers are known: each sentence
must state the direction the numbers have, and say "no clear difference" when they have
none."""

from __future__ import annotations

import pandas as pd
import pytest
from studies import cfg

from bnstudy import axis_findings
from bnstudy.aggregate import typed

SEEDS = range(4)
NOISE = (0.001, -0.001, 0.002, -0.002)  # per seed: small next to the effects below


def summary_of(rows: list[tuple[dict, dict]]) -> pd.DataFrame:
    """summary.csv-like rows, typed as the report types them: (settings for studies.cfg,
    metrics); epochs_used 4."""
    return typed(pd.DataFrame([{**cfg(**settings).identity(), "epochs_used": 4, **metrics} for settings, metrics in rows]))


def momentum_study(effect: float, precise_effect: float = 0.0) -> pd.DataFrame:
    """bn_before and bn_after at momentum 0.01 and 0.3, 4 seeds: the eval-mode worst drop is
    0.03 at 0.01 and 0.03 + effect at 0.3 (the mean |change| 0.04 at both); PreciseBN's worst
    drop 0.01, plus precise_effect at 0.3."""
    rows = []
    for variant in ("bn_before", "bn_after"):
        for momentum, scale in ((0.01, 0.0), (0.3, 1.0)):
            for seed, noise in zip(SEEDS, NOISE):
                change = 0.03 + scale * effect + noise
                rows.append((dict(variant=variant, bn_momentum=momentum, seed=seed),
                             dict(worst_drop=change, mean_abs_change=0.04 + noise,
                                  worst_drop_precise_bn=0.01 + scale * precise_effect + noise / 2)))  # fmt: skip
    return summary_of(rows)


def test_momentum_that_enlarges_the_swings_is_said_to():
    sentences = axis_findings.momentum_findings(momentum_study(effect=0.02))
    assert len(sentences) == 2 and all("the worst drop changes by +2.0 pp" in s for s in sentences)
    assert all("the mean |change| by +0.0 pp" in s for s in sentences)  # rises and falls alike: unchanged
    assert all("a larger momentum makes the eval-mode falls larger while PreciseBN's do not move clearly, so "
               "the running statistics carry the difference" in s for s in sentences)  # fmt: skip
    assert "For bn_before, the worst drop of eval-mode test accuracy is 3.0 pp at 0.01 and 5.0 pp at 0.3" in sentences[0]
    assert "larger in 4 of 4 pairs" not in sentences[0] and "higher in 4 of 4 pairs" in sentences[0]


def test_momentum_that_shrinks_the_swings_and_moves_precise_bn_too():
    sentences = axis_findings.momentum_findings(momentum_study(effect=-0.02, precise_effect=-0.005))
    assert all("worst drop changes by -2.0 pp" in s and "lower in 4 of 4 pairs" in s for s in sentences)
    assert all("makes the eval-mode falls smaller, and PreciseBN's falls move the same way, so the trained "
               "weights change too" in s for s in sentences)  # fmt: skip


def test_momentum_without_a_clear_effect_claims_none():
    sentences = axis_findings.momentum_findings(momentum_study(effect=0.0))
    assert all(s.endswith("no clear difference at this many seeds in the eval-mode falls.") for s in sentences)


def test_no_momentum_sentences_when_the_study_keeps_it_fixed():
    assert axis_findings.momentum_findings(momentum_study(0.02).query("bn_momentum == 0.3")) == []


def activation_study(before_minus_after: dict[str, float]) -> pd.DataFrame:
    """none, bn_before, bn_after per activation, 4 seeds: bn_after's worst drop is 0.02,
    bn_before's 0.02 + the activation's difference; the mean |change| 0.05 for all (rises
    and falls: not what the verdict rests on)."""
    rows = []
    for activation, difference in before_minus_after.items():
        for seed, noise in zip(SEEDS, NOISE):
            for variant, change in (("none", 0.05), ("bn_before", 0.02 + difference), ("bn_after", 0.02)):
                rows.append((dict(variant=variant, activation=activation, seed=seed),
                             dict(mean_abs_change=0.05 + noise, worst_drop=change + noise,
                                  final_acc=0.8 + (variant == "bn_after") * 0.05)))  # fmt: skip
    return summary_of(rows)


@pytest.mark.parametrize("differences, verdict", [
    ({"sigmoid": 0.03, "relu": 0.02, "tanh": 0.04},
     "The before/after verdict does not depend on the activation: bn_before's test accuracy falls further than bn_after's with each of them."),
    ({"sigmoid": -0.03, "relu": -0.02, "tanh": -0.04},
     "The before/after verdict does not depend on the activation: bn_before's test accuracy falls less far than bn_after's with each of them."),
    ({"sigmoid": 0.03, "relu": -0.02, "tanh": 0.0},
     "The before/after verdict depends on the activation: with sigmoid, bn_before's test accuracy falls further than bn_after's, with "
     "relu, bn_before's test accuracy falls less far than bn_after's and with tanh, no clear difference at this many seeds."),
    ({"sigmoid": 0.03, "relu": 0.0, "tanh": 0.0},
     "The before/after verdict is clear only with sigmoid: with sigmoid, bn_before's test accuracy falls further than bn_after's, with "
     "relu, no clear difference at this many seeds and with tanh, no clear difference at this many seeds."),
    ({"sigmoid": 0.0, "relu": 0.0, "tanh": 0.0},
     "Between BN before and after the activation there is no clear difference at this many seeds for any activation."),
])  # fmt: skip
def test_the_before_after_verdict_per_activation(differences, verdict):
    sentences = axis_findings.activation_findings(activation_study(differences))
    assert sentences[-1] == verdict
    sigmoid = next(s for s in sentences if s.startswith("With sigmoid"))
    assert f"worst drop {100 * differences['sigmoid']:+.1f} pp" in sigmoid and "mean |change| +0.0 pp" in sigmoid
    assert "final test accuracy 80.0% for none, 80.0% for bn_before and 85.0% for bn_after" in sigmoid


def test_no_activation_sentences_when_the_study_keeps_it_fixed():
    assert axis_findings.activation_findings(activation_study({"sigmoid": 0.03})) == []
