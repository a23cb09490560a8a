"""bnstudy.report.findings on hand-made studies whose answers are known: PreciseBN's claims and
the BN-statistics table as values, still-learning variants, stuck and diverged runs
grouped by cell."""

from __future__ import annotations

import pandas as pd
import pytest
from studies import cfg, hand_rows, write_hand_run

from bnstudy.results import aggregate
from bnstudy.report import findings
from bnstudy.report.analysis import analyze
from bnstudy.stats.claims import Verdict

SEEDS = range(8)


def write(root, curves: dict):
    """One run per {(variant, seed): (test accuracy per epoch, PreciseBN's)}; the analysis."""
    for (variant, seed), (acc, precise) in curves.items():
        config = cfg(variant, seed=seed)
        write_hand_run(root, config, hand_rows(config, acc, precise=precise))
    return analyze(aggregate.load_results(root))


def precise_study(removed: float) -> dict:
    """bn_before, 8 seeds: eval mode falls 10 + s/2 pp from 80%, PreciseBN falls `1 - removed`
    of that; none rises steadily."""
    curves = {}
    for s in SEEDS:
        drop = 0.10 + 0.005 * s
        curves[("bn_before", s)] = ([0.7, 0.8, 0.8 - drop, 0.85], [0.7, 0.8, 0.8 - drop * (1 - removed), 0.85])
        curves[("none", s)] = ([0.5, 0.6, 0.7, 0.8 + 0.001 * s], None)
    return curves


@pytest.mark.parametrize("removed, verdict", [(0.9, Verdict.LOWER), (0.0, Verdict.NEGLIGIBLE)])
def test_precise_bn_claims_and_table(tmp_path, removed, verdict):
    a = write(tmp_path, precise_study(removed))
    (row,) = a.claims[a.claims["family"] == findings.PRECISE_BN].to_dict("records")
    drops = [0.10 + 0.005 * s for s in SEEDS]
    assert (row["scope"], row["n_pairs"]) == ("variant bn_before", 8)
    assert row["mean"] == pytest.approx(-removed * sum(drops) / 8)
    assert row["verdict"] == verdict.value
    stats = a.statistics.loc["bn_before"]
    assert stats["runs"] == 8 and stats["worst_drop"] == pytest.approx(sum(drops) / 8)
    assert stats["removed"] == pytest.approx(removed)
    assert "none" not in a.statistics.index  # no BN statistics to compare


def test_still_learning_names_the_variant_that_only_rises(tmp_path):
    a = write(tmp_path, precise_study(0.9))
    text = findings.still_learning_text(a.epochs)
    shares = findings.upward_share(a.epochs)
    assert shares["none"] == 1.0 and shares["bn_before"] < 0.75
    assert text is not None and "none (100%)" in text and "bn_before" not in text


def test_runs_are_grouped_by_cell(tmp_path):
    summary = pd.DataFrame([{**cfg("none", seed=s, batch_size=b).identity(), "stuck": s < 3 or b == 32,
                             "diverged": False} for s in range(3) for b in (32, 256)])  # fmt: skip
    text = findings.stuck_text(aggregate.typed(summary), [])
    assert text.count("all 3 seeds") == 2 and "6 of 6 runs" in text
    assert findings.diverged_text(aggregate.typed(summary), []) == "No run diverged (6 runs)."
