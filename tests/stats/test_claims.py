"""bnstudy.stats.claims: Holm's correction against a worked example, the verdict rules (ties,
tiny effects, too few pairs), the family-wise error of a whole report by simulation, and
the three studies a statistician would check first."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bnstudy.stats import claims
from bnstudy.stats import contrasts
from bnstudy.stats.claims import Claim, Verdict, decide, holm


def test_holm_matches_a_worked_example():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept monotone: 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.2, np.nan, 0.01])  # NaN is no test: m = 2
    assert np.isnan(adjusted[1]) and adjusted[[0, 2]].tolist() == pytest.approx([0.2, 0.02])
    assert holm([0.6, 0.5]).tolist() == [1.0, 1.0]  # capped at 1


def claim_of(values, family="comparison", metric="worst_drop", seeds=None) -> Claim:
    d = pd.Series(values, index=seeds if seeds is not None else range(len(values)), dtype=float)
    return Claim(family, "variant", "bn_before", "bn_after", metric, "", d)


def test_decide_adjusts_over_every_claim_of_the_report():
    rng = np.random.default_rng(0)
    family = [claim_of(rng.normal(0.02, 0.01, 12)), claim_of(rng.normal(0.0, 0.01, 12), "momentum"),
              claim_of(rng.normal(0.01, 0.01, 8), "precise_bn"), claim_of([0.01])]  # the last: no test
    table = decide(family)
    assert list(table.columns) == claims.COLUMNS
    np.testing.assert_allclose(table["p_adjusted"], holm(table["p"]))
    assert np.isnan(table["p"].iloc[3]) and table["verdict"].iloc[3] == Verdict.TOO_FEW.value


def test_a_difference_that_prints_as_zero_is_never_a_claim():
    # 12 pairs of one sign, p = 2/4096: but the mean is 0.02 pp
    table = decide([claim_of(np.linspace(0.0001, 0.0003, 12))])
    assert table["p"].iloc[0] < 0.001 and table["verdict"].iloc[0] == Verdict.NEGLIGIBLE.value


def test_ties_are_no_evidence():
    # 12 of 16 pairs tie: 4 non-zero differences can reach p = 1/8 at best, fewer than 6 needed
    table = decide([claim_of([0.0] * 12 + [0.01, 0.02, 0.015, 0.03])])
    row = table.iloc[0]
    assert (row["ties"], row["verdict"]) == (12, Verdict.TOO_FEW.value)


def test_five_seeds_of_one_sign_make_no_claim_and_say_how_many_seeds_would():
    row = decide([claim_of([0.03, 0.05, 0.02, 0.04, 0.06])]).iloc[0]
    assert row["p"] == pytest.approx(1 / 16) and row["verdict"] == Verdict.TOO_FEW.value
    assert row["detectable"] == math.inf  # 5 pairs detect nothing at 5%
    assert 6 <= row["seeds_needed"] <= 12  # a consistent 4 pp in 1.6 pp of noise: about 6-8 seeds


def test_twelve_seeds_with_a_consistent_large_difference_make_the_claim():
    rng = np.random.default_rng(1)
    row = decide([claim_of(rng.normal(0.03, 0.01, 12))]).iloc[0]
    assert row["verdict"] == Verdict.HIGHER.value and row["p_adjusted"] < 0.05
    assert row["low"] > 0 and math.isnan(row["seeds_needed"])
    negative = decide([claim_of(-rng.normal(0.03, 0.01, 12))]).iloc[0]
    assert negative["verdict"] == Verdict.LOWER.value


def test_twelve_seeds_centred_on_zero_make_none():
    rng = np.random.default_rng(2)
    table = decide([claim_of(rng.normal(0, 0.02, 12) - 0.0) for _ in range(5)])
    assert not table["verdict"].map(Verdict).map(lambda v: v.clear).any()


def test_the_claim_threshold_is_exactly_alpha():
    """A claim needs p_adjusted < ALPHA: at exactly 0.05 it is not made."""
    c = contrasts.Contrast(12, 12, 0.01, 0.01, 0.001, 0.02, 12, 0, claims.ALPHA, "sign-flip, exact")
    assert claims.verdict(c, claims.ALPHA) is Verdict.UNCLEAR
    assert claims.verdict(c, claims.ALPHA - 1e-9) is Verdict.HIGHER


def test_a_whole_report_on_null_studies_claims_something_in_at_most_five_percent():
    """300 null reports of 15 claims (12 pairs each): the share with any claim after Holm."""
    trials, m, n = 300, 15, 12
    d = np.random.default_rng(4).normal(size=(trials * m, n))
    p, _ = contrasts.sign_flip_p(d)
    adjusted = np.array([holm(row) for row in p.reshape(trials, m)])
    fwer = np.mean((adjusted < claims.ALPHA).any(axis=1))
    assert fwer <= 0.05 + 2.5 * math.sqrt(0.05 * 0.95 / trials)
    raw = np.mean((p.reshape(trials, m) < claims.ALPHA).any(axis=1))
    assert raw > 0.3  # without the correction, over half of them would claim something
