"""bnstudy.report.remedies on a hand-made remedies study whose answers are known: which remedy
lowers bn_before's worst drop, its price, whether it is as steady as PreciseBN, the
pooling confound; as claims' values."""

from __future__ import annotations

import pandas as pd
import pytest
from studies import cfg

from bnstudy.report import remedies
from bnstudy.results.aggregate import typed
from bnstudy.stats.claims import Verdict, decide

SEEDS = range(12)
NOISE = [0.001 * ((s * 7) % 5 - 2) for s in SEEDS]  # small, seed by seed, mean 0 over 10 of them


def row(noise, variant="bn_before", worst=0.05, precise=0.005, final=0.85, **settings):
    return {**cfg(variant, **settings).identity(), "epochs_used": 4, "stuck": False, "worst_drop": worst + noise,
            "worst_drop_precise_bn": precise + noise / 4, "final_acc": final + noise, "best_acc": final + 0.005 + noise,
            "train_seconds": 8.0}


def study() -> pd.DataFrame:
    """The baseline falls 5 pp (PreciseBN 0.5 pp); group norm falls 0.5 pp at 1 pp of
    accuracy; momentum 0.3 changes nothing; with average pooling BN's gain over none halves."""
    rows = []
    for s, noise in zip(SEEDS, NOISE):
        rows += [row(noise, seed=s), row(noise, seed=s, norm="group", worst=0.005, precise=float("nan"), final=0.84),
                 row(noise * 2, seed=s, bn_momentum=0.3),
                 row(noise, "none", worst=0.0, precise=float("nan"), final=0.75, seed=s),
                 row(noise, seed=s, pool="avg", final=0.80), row(noise, "none", final=0.75, seed=s, pool="avg")]
    return typed(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def claims():
    summary = study()
    return decide([*remedies.remedy_claims(summary), *remedies.pooling_claims(summary)])


def one(claims, **match) -> pd.Series:
    rows = claims
    for key, value in match.items():
        rows = rows[rows[key] == value]
    (found,) = [r for _, r in rows.iterrows()]
    return found


def test_a_remedy_that_removes_the_swings_and_its_price(claims):
    group = claims[claims["a"] == "normalization group"]
    drop = one(group, metric="worst_drop", b=remedies.BASELINE_NAME)
    assert drop["mean"] == pytest.approx(-0.045) and drop["verdict"] == Verdict.LOWER.value and drop["n_pairs"] == 12
    for metric in ("final_acc", "best_acc"):  # the price, at the end and at the best epoch
        price = one(group, metric=metric)
        assert price["mean"] == pytest.approx(-0.01) and price["verdict"] == Verdict.LOWER.value
    steady = one(group, b=f"{remedies.BASELINE_NAME} with PreciseBN")  # 0.5 pp against PreciseBN's 0.5 pp
    assert steady["mean"] == pytest.approx(0.0, abs=0.0005)


def test_a_remedy_that_changes_nothing_claims_nothing(claims):
    momentum = one(claims[claims["a"] == "BN momentum 0.3"], metric="worst_drop", b=remedies.BASELINE_NAME)
    assert not Verdict(momentum["verdict"]).clear


def test_the_pooling_confound(claims):
    pooling = claims[claims["family"] == remedies.POOLING]
    assert one(pooling, scope="pool max")["mean"] == pytest.approx(0.10)
    assert one(pooling, scope="pool avg")["mean"] == pytest.approx(0.05)
    gap = one(pooling, axis="pool")
    assert gap["mean"] == pytest.approx(-0.05) and gap["verdict"] == Verdict.LOWER.value


def test_training_time_per_epoch_per_arm():
    table = remedies.time_table(study())
    assert table["arm"].iloc[0] == remedies.BASELINE_NAME and table["runs"].iloc[0] == 12
    assert (table["seconds"] == 2.0).all()  # 8 s over 4 epochs
    assert {"normalization group", "BN momentum 0.3"} <= set(table["arm"])


def test_a_study_of_momentum_alone_is_the_momentum_studys_not_a_remedies_one():
    from bnstudy.report import axis_findings

    summary = study()
    momentum_only = summary[(summary["norm"] == "batch") & (summary["pool"] == "max")
                            & (summary["variant"] == "bn_before")]  # fmt: skip
    assert remedies.remedy_claims(momentum_only) == [] and len(axis_findings.momentum_claims(momentum_only)) == 2
    assert axis_findings.momentum_claims(summary) == []  # in a remedies study, momentum is one remedy among others


def test_a_pooling_confound_without_pairs_is_no_bullet_and_no_nan():
    """A remedies study whose `none` runs are all missing: the pooling claims have no pairs;
    the summary says nothing of them and the table shows a dash, not "nan"."""
    from bnstudy.report.render import claims_md, remedy_bullets

    summary = study()
    summary = summary[summary["variant"] != "none"]
    claims = decide([*remedies.remedy_claims(summary), *remedies.pooling_claims(summary)])
    pooling = claims[claims["family"] == remedies.POOLING]
    assert len(pooling) and (pooling["n_pairs"] == 0).all()
    assert not any("pooling confound" in bullet for bullet in remedy_bullets(claims))
    assert "nan" not in claims_md(pooling, lambda r: r["a"]).lower()
