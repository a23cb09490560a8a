"""bnstudy.stats.contrasts: which runs pair up, the sign-flip test and the t interval against
direct computations, and their error rates by simulation at the seed counts studies use.

The simulations draw paired differences (no training) from three families: normal,
heavy-tailed (t with 3 degrees of freedom), and the difference of two values floored at 0
(like two runs' worst drops: skewed marginals, many ties). Each rate is checked within
about 2.5 Monte Carlo standard errors of its target."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from studies import cfg

from bnstudy.stats import contrasts
from bnstudy.results.aggregate import CONFIG_KEYS, typed

TRIALS = 1000
SEEDS = (3, 5, 8, 12, 27)


def summary_of(runs: list[tuple[dict, float]]) -> pd.DataFrame:
    """A summary.csv-like frame, typed as the report types it (a missing limit is <NA>):
    one row per (settings for studies.cfg, worst_drop)."""
    return typed(pd.DataFrame([{**cfg(**settings).identity(), "limit_test": None, "worst_drop": value}
                               for settings, value in runs],
                              columns=[*CONFIG_KEYS, "worst_drop"]))  # fmt: skip


def test_runs_pair_when_they_differ_in_the_axis_alone():
    summary = summary_of([
        (dict(variant="bn_after", seed=0), 0.10), (dict(variant="bn_before", seed=0), 0.15),
        (dict(variant="bn_after", seed=1), 0.20), (dict(variant="bn_before", seed=1), 0.05),
        (dict(variant="bn_before", seed=2), 0.50),  # no partner: seed 2 has no bn_after run
        (dict(variant="bn_after", seed=0, lr=1e-2), 0.30),  # no partner at lr 1e-2
        (dict(variant="bn_before", seed=3, lr=1e-2), 0.40),  # nor here: another seed
    ])  # fmt: skip
    differences = contrasts.paired_differences(summary, "variant", "bn_after", "bn_before", "worst_drop")
    assert dict(zip(differences.index, differences.round(10))) == {0: 0.05, 1: -0.15}
    c = contrasts.contrast(differences)
    assert (c.n, c.seeds, c.above, c.below, c.ties) == (2, 2, 1, 1, 0)


def enumerated_p(d: np.ndarray) -> float:
    """The sign-flip p-value by listing every sign pattern: the share of patterns whose
    |mean| reaches the observed one (with a relative tolerance for float sums)."""
    observed = abs(d.mean())
    means = [abs(np.mean(np.array(signs) * d)) for signs in itertools.product((1, -1), repeat=d.size)]
    return float(np.mean([m >= observed * (1 - 1e-12) for m in means]))


def test_sign_flip_p_and_t_interval_match_direct_computations():
    # README claim 1 of bnstudy 0.1: bn_before - bn_after worst drop over 5 seeds (pp)
    d = np.array([-0.6, 7.4, 5.1, 2.2, 0.2]) / 100
    p, method = contrasts.sign_flip_p(d)
    assert p == pytest.approx(enumerated_p(d)) == pytest.approx(6 / 32)  # 0.1875: no claim
    assert method == "sign-flip, exact"
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert contrasts.t_interval(d) == pytest.approx((d.mean() - half, d.mean() + half))
    assert contrasts.t_interval(d) == pytest.approx((-0.013, 0.070), abs=5e-4)


def test_five_pairs_of_one_sign_cannot_reach_five_percent():
    p, _ = contrasts.sign_flip_p(np.array([0.01, 0.02, 0.03, 0.04, 0.05]))
    assert p == pytest.approx(2 / 32)
    assert contrasts.min_pairs(0.05) == 6 and contrasts.min_pairs(0.05 / 15) == 10


def test_ties_add_no_evidence():
    # 12 of 16 pairs tie (both runs never drop): only 4 differences can flip
    d = np.array([0.0] * 12 + [0.01, 0.02, 0.015, 0.03])
    p, _ = contrasts.sign_flip_p(d)
    assert p == pytest.approx(2 / 16)
    c = contrasts.contrast(pd.Series(d))
    assert (c.above, c.below, c.ties) == (4, 0, 12)


def test_monte_carlo_p_above_the_exact_range_agrees_with_the_exact_one(monkeypatch):
    d = np.random.default_rng(3).normal(0.4, 1, size=14)
    exact, _ = contrasts.sign_flip_p(d)
    monkeypatch.setattr(contrasts, "EXACT_UP_TO", 10)
    drawn, method = contrasts.sign_flip_p(d)
    assert method.startswith("sign-flip, 100,000 random")
    assert drawn == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / contrasts.MC_RESAMPLES))


@pytest.mark.parametrize("n", [9, 20])  # exact, and Monte Carlo (EXACT_UP_TO is 16)
def test_contrasts_of_many_series_are_each_series_alone(n):
    # decide tests every claim in one call per pair count: each p must be its own call's
    rng = np.random.default_rng(n)
    series = [pd.Series(rng.normal(0.3 * k, 1, size=n), index=range(n)) for k in range(5)]
    series += [pd.Series(rng.normal(size=n + 3)), pd.Series([0.1]), pd.Series([], dtype=float)]
    together = contrasts.contrasts(series)
    alone = [contrasts.contrasts([d])[0] for d in series]
    pd.testing.assert_frame_equal(pd.DataFrame(together), pd.DataFrame(alone), check_exact=True)  # NaN = NaN
    assert [c.n for c in together] == [n] * 5 + [n + 3, 1, 0]


def draw(kind: str, n: int, rng, shift: float = 0.0) -> np.ndarray:
    """(TRIALS, n) paired differences whose mean is `shift` standard deviations (normal,
    t3) or `shift` (floored: max(0, X + shift) - max(0, Y), X and Y ~ N(-0.5, 1))."""
    if kind == "normal":
        return rng.normal(shift, 1, size=(TRIALS, n))
    if kind == "t3":
        return rng.standard_t(3, size=(TRIALS, n)) / math.sqrt(3) + shift  # t3's std is sqrt(3)
    x, y = rng.normal(-0.5, 1, size=(2, TRIALS, n))
    return np.maximum(0, x + shift) - np.maximum(0, y)


def floored_mean(shift: float) -> float:
    """E[max(0, X + shift)] - E[max(0, Y)] for X, Y ~ N(-0.5, 1)."""
    def e(mu):  # E[max(0, N(mu, 1))]
        return mu * stats.norm.cdf(mu) + stats.norm.pdf(mu)

    return e(-0.5 + shift) - e(-0.5)


def mc_bound(rate: float) -> float:
    return 2.5 * math.sqrt(rate * (1 - rate) / TRIALS)


@pytest.fixture
def fast_monte_carlo(monkeypatch):
    """The Monte Carlo test (n = 27) with fewer random signs: with the observed pattern
    counted it is valid at any count, and 2,000 keep 1,000 trials fast."""
    monkeypatch.setattr(contrasts, "MC_RESAMPLES", 2000)


@pytest.mark.parametrize("kind", ["normal", "t3", "floored"])
@pytest.mark.parametrize("n", SEEDS)
def test_under_the_null_at_most_five_percent_of_studies_claim_a_difference(kind, n, fast_monte_carlo):
    rng = np.random.default_rng(100 + n)
    p, _ = contrasts.sign_flip_p(draw(kind, n, rng))
    assert np.mean(p < 0.05) <= 0.05 + mc_bound(0.05)


@pytest.mark.parametrize("kind", ["normal", "t3", "floored"])
@pytest.mark.parametrize("n", SEEDS)
def test_the_interval_covers_the_true_mean_in_about_95_percent(kind, n):
    rng = np.random.default_rng(200 + n)
    shift = 0.7
    truth = floored_mean(shift) if kind == "floored" else shift
    low, high = contrasts.t_interval(draw(kind, n, rng, shift))
    coverage = np.mean((low <= truth) & (truth <= high))
    # symmetric differences: within MC error of 95%; the skewed ones a few points below at worst
    floor = 0.91 if kind == "floored" else 0.95 - mc_bound(0.05) - 0.01
    assert floor <= coverage <= 0.95 + mc_bound(0.05) + 0.01


def test_a_real_effect_of_one_and_a_half_standard_deviations_is_found_at_12_pairs():
    p, _ = contrasts.sign_flip_p(draw("normal", 12, np.random.default_rng(5), shift=1.5))
    assert np.mean(p < 0.05) > 0.9


def test_the_planner_power_matches_a_simulated_t_test():
    n, alpha = 10, 0.05 / 12
    sd = 0.02
    delta = contrasts.detectable_difference(sd, n, alpha)
    d = np.random.default_rng(9).normal(delta, sd, size=(4000, n))
    rate = np.mean(stats.ttest_1samp(d, 0, axis=1).pvalue < alpha)
    assert rate == pytest.approx(contrasts.POWER, abs=0.03)
    needed = contrasts.pairs_needed(delta, sd, alpha)
    assert needed == n  # the n that detects delta is the n delta was planned for
    assert contrasts.pairs_needed(delta / 2, sd, alpha) > 2.5 * n  # half the difference: about 3-4x the pairs
    assert contrasts.detectable_difference(sd, 5, alpha) == math.inf  # 5 pairs reach no p below 0.0625
    assert contrasts.pairs_needed(0.0, sd, alpha) is None
