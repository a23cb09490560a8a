"""bnstudy.contrasts: which runs pair up, the bootstrap interval against a direct
computation, and when a difference may be claimed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from studies import cfg

from bnstudy import contrasts
from bnstudy.aggregate import CONFIG_KEYS, typed


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
    assert sorted(differences.round(10)) == [-0.15, 0.05]


def test_bootstrap_interval_matches_a_direct_computation():
    values = np.array([0.03, -0.01, 0.02, 0.05, 0.00, 0.04])
    rng = np.random.default_rng(7)
    means = [np.mean([values[rng.integers(0, 6)] for _ in range(6)]) for _ in range(500)]  # one draw at a time
    # numpy draws a (500, 6) block in the same order as 500 x 6 single draws
    low, high = contrasts.bootstrap_interval(values, samples=500, seed=7)
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    assert low < values.mean() < high


@pytest.mark.parametrize("values, clear, direction", [
    ([0.02, 0.03, 0.025, 0.04], True, 1),
    ([-0.02, -0.03, -0.025, -0.04], True, -1),
    ([0.05, -0.04, 0.03, -0.05], False, 0),  # the interval includes 0
    ([0.02, 0.03], False, 0),  # all above 0, but two pairs are too few to tell
])  # fmt: skip
def test_a_difference_is_clear_only_when_its_interval_excludes_zero(values, clear, direction):
    c = contrasts.contrast(pd.Series(values))
    assert (c.clear, c.direction) == (clear, direction)
    assert (c.n, c.above, c.below) == (len(values), sum(v > 0 for v in values), sum(v < 0 for v in values))
    assert c.low <= c.mean <= c.high
