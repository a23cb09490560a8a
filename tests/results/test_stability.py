"""Stuck runs (stuck at chance): the rule against hand-made curves, their count per cell,
and that the cells' stability averages leave them out (against a direct pandas computation)."""

from __future__ import annotations

import pandas as pd
import pytest
from studies import cfg, hand_rows, write_hand_run

from bnstudy.results import aggregate
from bnstudy.report import findings

# (variant, seed): test accuracy per epoch
CURVES = {
    ("none", 0): [0.10, 0.10, 0.10, 0.10],  # stuck at chance: flat, a 0.0 pp worst drop
    ("none", 1): [0.098, 0.103, 0.100, 0.101],  # stuck, with the noise of chance
    ("none", 2): [0.10, 0.12, 0.16, 0.30],  # a slow learner: leaves chance late, rising steeply
    ("bn_before", 0): [0.60, 0.75, 0.70, 0.80],
    ("bn_before", 1): [0.10, 0.10, 0.10, 0.10],  # stuck
    ("bn_before", 2): [0.65, 0.70, 0.60, 0.82],
}


@pytest.fixture
def stuck_study(tmp_path):
    for (variant, seed), acc in CURVES.items():
        write_hand_run(tmp_path, cfg(variant, seed=seed), hand_rows(cfg(variant, seed=seed), acc))
    study = aggregate.load_results(tmp_path)
    summary = aggregate.summarize_runs(study)
    return summary, aggregate.aggregate_cells(summary, study.expected), study.epochs[aggregate.counts(study.epochs)]


def test_a_run_at_chance_is_stuck_and_a_slow_learner_is_not(stuck_study):
    summary, _, _ = stuck_study
    flags = {(str(r.variant), r.seed): r.stuck for r in summary.itertuples()}
    assert flags == {("none", 0): True, ("none", 1): True, ("none", 2): False,
                     ("bn_before", 0): False, ("bn_before", 1): True, ("bn_before", 2): False}  # fmt: skip
    assert summary["stuck"].dtype == bool


def test_the_rule_is_the_best_accuracy_below_twenty_percent():
    best = pd.Series([0.1, 0.199, 0.2, 0.5, float("nan")])
    assert aggregate.stuck(best).tolist() == [True, True, False, False, False]  # no counted epoch: no verdict


def test_cells_count_stuck_runs(stuck_study):
    _, cells, _ = stuck_study
    assert dict(zip(cells["variant"].astype(str), cells["n_stuck"])) == {"none": 2, "bn_before": 1}
    assert (cells["n"] == 3).all()


def test_stability_averages_leave_stuck_runs_out(stuck_study):
    summary, cells, _ = stuck_study
    learning = summary[summary["best_acc"] >= 0.20].astype({"variant": str})  # direct: the rule by hand
    ours = cells.astype({"variant": str}).set_index("variant")
    for metric in aggregate.STABILITY_METRICS:
        direct = learning.groupby("variant")[metric].agg(["mean", "std"])
        for stat in ("mean", "std"):
            pd.testing.assert_series_equal(ours[f"{metric}_{stat}"].sort_index(), direct[stat].sort_index(),
                                           check_names=False)  # fmt: skip
    # none keeps one learning run: its worst drop (0.0) and its std (undefined for one run)
    assert ours.loc["none", "worst_drop_mean"] == 0 and pd.isna(ours.loc["none", "worst_drop_std"])
    assert ours.loc["bn_before", "worst_drop_mean"] == pytest.approx((0.05 + 0.10) / 2)
    # the accuracy metrics keep every run: a stuck run's 10% is what that cell scored
    everyone = summary.astype({"variant": str}).groupby("variant")["final_acc"].mean()
    pd.testing.assert_series_equal(ours["final_acc_mean"].sort_index(), everyone.sort_index(), check_names=False)


def test_stuck_runs_are_named_grouped_by_cell(stuck_study):
    summary = stuck_study[0]
    text = findings.stuck_text(summary, [])
    assert text.startswith("3 of 6 runs stuck at chance")
    assert text.endswith(": none at learning rate 0.001, batch size 256: seeds 0 and 1 of 3; bn_before at learning "
                         "rate 0.001, batch size 256: seed 1 of 3.")  # fmt: skip
    assert findings.stuck_text(summary[~summary["stuck"]], []) is None  # none stuck: no sentence
