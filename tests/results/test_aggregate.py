"""bnstudy.results.aggregate: curve and run metrics against hand-computed values, loading of
partial and broken studies, summary and cells against a direct pandas computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import studies
from studies import cfg, frame, hand_rows, write_hand_run

from bnstudy.results import aggregate
from bnstudy.results.store import RunStore


def test_curve_metrics_hand_example():
    m = aggregate.curve_metrics([0.5, 0.7, 0.6, 0.8, 0.75])
    assert m["final_acc"] == 0.75 and m["best_acc"] == 0.8
    assert m["mean_abs_change"] == pytest.approx((0.2 + 0.1 + 0.2 + 0.05) / 4)
    assert m["worst_drop"] == pytest.approx(0.1)  # 0.7 -> 0.6 beats 0.8 -> 0.75
    # the last ceil(5/2) = 3 epochs 0.6, 0.8, 0.75 (mean 0.71667), population std
    assert m["late_std"] == pytest.approx(math.sqrt((0.11667**2 + 0.08333**2 + 0.03333**2) / 3), abs=1e-5)


def test_worst_drop_measures_from_the_running_best_not_the_previous_epoch():
    # a steady fall: each epoch is only 0.10 below the one before, but 0.20 below the best
    assert aggregate.curve_metrics([0.80, 0.70, 0.60])["worst_drop"] == pytest.approx(0.20)
    assert aggregate.curve_metrics([0.60, 0.70, 0.80])["worst_drop"] == 0.0  # a steady rise never drops


def test_late_std_uses_last_half_of_an_even_count():
    assert aggregate.curve_metrics([0.1, 0.2, 0.3, 0.4])["late_std"] == pytest.approx(0.05)  # [0.3, 0.4]


def test_ties_and_plateaus():
    flat = aggregate.curve_metrics([0.8, 0.8, 0.8])
    assert (flat["mean_abs_change"], flat["worst_drop"], flat["late_std"], flat["best_acc"]) == (0, 0, 0, 0.8)
    tied_best = aggregate.curve_metrics([0.8, 0.7, 0.8, 0.7])
    assert tied_best["worst_drop"] == pytest.approx(0.1)
    assert tied_best["mean_abs_change"] == pytest.approx(0.1)
    assert aggregate.curve_metrics([0.1, 0.3, 0.3, 0.9])["worst_drop"] == 0  # never below an earlier best


def test_single_epoch_and_empty_curve():
    one = aggregate.curve_metrics([0.6])
    assert one["final_acc"] == one["best_acc"] == 0.6
    assert math.isnan(one["mean_abs_change"]) and one["worst_drop"] == 0 and one["late_std"] == 0
    assert all(math.isnan(v) for v in aggregate.curve_metrics([]).values())


def test_run_metrics_gaps_and_diagnostics():
    rows = hand_rows(cfg(), [0.5, 0.6, 0.55], train_acc=[0.6, 0.7, 0.9], precise=[0.7, 0.7, 0.7],
                     batch_stats=[0.6, 0.5, 0.6])  # fmt: skip
    m = aggregate.run_metrics(frame(rows))
    assert m["gen_gap"] == pytest.approx(0.9 - 0.55)
    assert m["ema_gap"] == pytest.approx(((0.7 - 0.5) + (0.7 - 0.6) + (0.7 - 0.55)) / 3)
    assert m["mean_abs_change_precise_bn"] == 0 and m["worst_drop_precise_bn"] == 0
    assert m["mean_abs_change_batch_stats"] == pytest.approx(0.1) and m["worst_drop_batch_stats"] == pytest.approx(0.1)
    assert m["epochs_used"] == 3


def test_run_metrics_without_bn_has_no_ema_gap():
    m = aggregate.run_metrics(frame(hand_rows(cfg(variant="none"), [0.5, 0.6])))
    assert math.isnan(m["ema_gap"]) and math.isnan(m["mean_abs_change_precise_bn"])
    assert m["final_acc"] == 0.6


def test_diverged_run_counts_its_finite_epochs_only():
    # epoch 3's loss is NaN: its accuracy (NaN weights) must not count as a drop
    rows = hand_rows(cfg(), [0.5, 0.6, 0.1], train_acc=[0.55, 0.65, 0.1], nan_from=3)
    rows[2]["test_acc_precise_bn"] = math.nan
    m = aggregate.run_metrics(frame(rows))
    assert m["epochs_used"] == 2
    assert (m["final_acc"], m["best_acc"], m["worst_drop"]) == (0.6, 0.6, 0)
    assert m["mean_abs_change"] == pytest.approx(0.1)
    assert m["gen_gap"] == pytest.approx(0.05)
    assert m["late_std"] == 0  # the last ceil(2/2) = 1 counted epoch
    nothing = aggregate.run_metrics(frame(hand_rows(cfg(), [0.1], nan_from=1)))
    assert nothing["epochs_used"] == 0 and math.isnan(nothing["final_acc"]) and math.isnan(nothing["gen_gap"])


def test_partial_study_loads_and_says_what_is_missing(partial_study):
    study = aggregate.load_results(partial_study)
    assert sorted(study.runs["run_id"]) == sorted([cfg("none", seed=0).run_id, cfg("bn_before", seed=0).run_id])
    skipped = {
        cfg("none", seed=1).run_id: ("failed", "failed"),
        cfg("bn_after", seed=0).run_id: ("pending", "no JSON (in flight or killed)"),
        cfg("bn_after", seed=1).run_id: ("damaged", "no CSV"),
    }
    assert dict(zip(study.skipped["run_id"], zip(study.skipped["state"], study.skipped["reason"]))) == skipped
    reasons = {run_id: f"damaged: {reason}" if state == "damaged" else reason
               for run_id, (state, reason) in skipped.items()}  # fmt: skip
    assert study.epochs["variant"].dtype == pd.CategoricalDtype(["none", "bn_before", "bn_after"], ordered=True)
    assert study.epochs["limit_train"].dtype == "Int64" and study.epochs["batch_size"].dtype == "int64"
    missing = aggregate.missing_runs(study)
    assert dict(zip(missing["run_id"], missing["reason"])) == {**reasons, cfg("bn_before", seed=1).run_id: "not run"}
    summary = aggregate.summarize_runs(study)
    assert summary.set_index("variant").loc["bn_before", "diverged"]
    assert summary.set_index("variant").loc["bn_before", "final_acc"] == 0.8
    cells = aggregate.aggregate_cells(summary, study.expected)
    assert cells[["variant", "n", "n_expected", "n_diverged"]].astype({"variant": str}).values.tolist() == [
        ["none", 1, 2, 0],
        ["bn_before", 1, 2, 1],
        ["bn_after", 0, 2, 0],  # in the grid (its JSON says so) without a single done run
    ]
    assert cells["seed_std"].isna().all()  # one seed or none: no spread


def test_spec_copy_defines_the_grid(partial_study):
    spec = ('name = "hand"\nepochs = 4\nlr = 1e-3\nbatch_size = 256\nlimit_train = 1024\nlimit_test = 512\n'
            '[grid]\nvariant = ["none", "bn_before"]\nseed = [0, 1, 2]\n')  # fmt: skip
    (partial_study / "spec.toml").write_text(spec)
    study = aggregate.load_results(partial_study)
    assert study.grid_source == "from spec.toml"
    assert len(study.expected) == 6  # seed 2 appears in no run file, only in the spec; bn_after is not in it
    assert set(aggregate.missing_runs(study)["seed"]) == {1, 2}
    assert "bn_after" not in set(aggregate.missing_runs(study)["variant"])


def test_summary_matches_per_run_metrics(real_tables):
    study, summary, _ = real_tables
    assert len(summary) == 12 and not summary["diverged"].any()
    for _, row in summary.iterrows():
        run = study.epochs[study.epochs["run_id"] == row["run_id"]].sort_values("epoch")
        acc = run["test_acc"].to_numpy()
        assert row["final_acc"] == acc[-1] and row["best_acc"] == acc.max()
        assert row["mean_abs_change"] == pytest.approx(np.abs(np.diff(acc)).mean())


def test_cells_match_a_direct_pandas_groupby(real_tables):
    _, summary, cells = real_tables
    keys = ["variant", "lr", "batch_size"]  # the only cell settings that vary here
    # the volatility metrics count only the runs that left chance (best test accuracy 20% or more)
    at_chance = summary["best_acc"] < 0.20
    direct = (summary.assign(**{m: summary[m].where(~at_chance) for m in aggregate.STABILITY_METRICS})
              .astype({"variant": str}).groupby(keys)[aggregate.ALL_METRICS].agg(["mean", "std"]))  # fmt: skip
    ours = cells.astype({"variant": str}).set_index(keys)
    for metric in aggregate.ALL_METRICS:
        for stat in ("mean", "std"):
            pd.testing.assert_series_equal(ours[f"{metric}_{stat}"].sort_index(), direct[(metric, stat)].sort_index(),
                                           check_names=False)  # fmt: skip
    pd.testing.assert_series_equal(ours["seed_std"].sort_index(), direct[("final_acc", "std")].sort_index(),
                                   check_names=False)  # fmt: skip
    assert (ours["n"] == 2).all() and (ours["n_expected"] == 2).all()


def direct_worst_drop(acc) -> float:
    """The largest a(i) - a(j) over i < j, floored at 0, by brute force."""
    return max([0.0] + [acc[i] - acc[j] for j in range(len(acc)) for i in range(j)])


def test_fine_curve_metrics_are_the_points_own(tmp_path):
    """3 epochs x 4 points: the fine metrics equal a direct numpy computation on the points;
    a run without points gets NaN, the per-epoch metrics stay the epoch ends'."""
    fine = cfg("bn_before", epochs=3, evals_per_epoch=4)
    acc = [0.50, 0.62, 0.55, 0.60, 0.71, 0.58, 0.74, 0.70, 0.69, 0.80, 0.66, 0.78]
    precise = [a + 0.02 * (i % 2) for i, a in enumerate(acc)]
    rows = hand_rows(fine, acc[3::4], precise=precise[3::4])  # each epoch's k-th point is its row
    write_hand_run(tmp_path, fine, rows, points=studies.hand_points(fine, acc, precise))
    write_hand_run(tmp_path, cfg("bn_before", epochs=3), hand_rows(cfg("bn_before", epochs=3), [0.5, 0.6, 0.7]))
    study = aggregate.load_results(tmp_path)
    assert len(study.points) == 12 and (study.points["run_id"] == fine.run_id).all()
    summary = aggregate.summarize_runs(study).set_index("run_id")
    got = summary.loc[fine.run_id]
    for curve, suffix in ((np.array(acc), ""), (np.array(precise), "_precise_bn")):
        assert got[f"fine_mean_abs_change{suffix}"] == pytest.approx(np.mean(np.abs(curve[1:] - curve[:-1])))
        assert got[f"fine_worst_drop{suffix}"] == pytest.approx(direct_worst_drop(curve))
        assert got[f"fine_late_std{suffix}"] == pytest.approx(np.std(curve[4:]))  # epochs 2 and 3: ceil(3/2)
    assert got["fine_worst_drop"] == pytest.approx(0.80 - 0.66) and got["worst_drop"] == pytest.approx(0.0)
    assert summary.loc[cfg("bn_before", epochs=3).run_id, aggregate.FINE_METRICS].isna().all()
    cells = aggregate.aggregate_cells(summary.reset_index(), study.expected)
    assert cells["fine_worst_drop_mean"].dropna().tolist() == [pytest.approx(0.80 - 0.66)]


def test_a_diverged_runs_fine_curve_stops_with_its_counted_epochs(tmp_path):
    """Epoch 3's loss is NaN: its points (a NaN-weight net's 0.1) count no more than its row."""
    config = cfg("bn_before", epochs=3, evals_per_epoch=2)
    acc = [0.5, 0.7, 0.6, 0.65, 0.1, 0.1]
    write_hand_run(tmp_path, config, hand_rows(config, acc[1::2], nan_from=3), status="diverged",
                   points=studies.hand_points(config, acc))  # fmt: skip
    got = aggregate.summarize_runs(aggregate.load_results(tmp_path)).iloc[0]
    counted = np.array(acc[:4])
    assert got["fine_worst_drop"] == pytest.approx(0.1) and got["fine_late_std"] == pytest.approx(np.std(counted[2:]))
    assert got["fine_mean_abs_change"] == pytest.approx(np.abs(np.diff(counted)).mean())


def test_without_a_spec_the_runs_there_are_the_grid(tmp_path):
    # six runs as `bnstudy run` leaves them (results/single, no spec.toml), each differing from
    # the first in one setting: the product of the values seen would expect 64 runs, not 6.
    from bnstudy.report.analysis import analyze
    from bnstudy.report.render import render_report

    changes = [{}, {"lr": 1e-2}, {"batch_size": 128}, {"seed": 3}, {"epochs": 3}, {"activation": "relu"},
               {"bn_momentum": 0.3}]  # fmt: skip
    configs = [cfg("bn_before", **change) for change in changes[:6]]
    for config in configs:
        write_hand_run(tmp_path, config, hand_rows(config, [0.5, 0.6, 0.55, 0.7][: config.epochs]))
    failed = cfg("bn_before", **changes[6])  # a run present, not done: expected, and missing
    write_hand_run(tmp_path, failed, hand_rows(failed, [0.3]), status="failed")
    study = aggregate.load_results(tmp_path)
    assert sorted(study.expected["run_id"]) == sorted(c.run_id for c in [*configs, failed])
    assert aggregate.missing_runs(study)[["run_id", "reason"]].values.tolist() == [[failed.run_id, "failed"]]
    assert study.grid_source == "the runs in runs/: no spec.toml"
    a = analyze(study)
    text = render_report(a, [])
    assert "**Runs**: 6 of 7 done (6 complete, 0 diverged)" in text and len(text) < 20_000
    assert a.cells["n_expected"].sum() == 7 and len(a.cells) == 6  # seed 3 shares the first run's cell


def test_stuck_is_judged_on_the_best_accuracy_not_the_final(tmp_path):
    curves = {0: [0.5, 0.6, 0.1],  # learned, then fell back to chance at the end: not stuck
              1: [0.1, 0.12, 0.15],  # never left chance: stuck
              2: [0.1, 0.12, 0.3]}  # left chance late, in its last epoch: not stuck  # fmt: skip
    for seed, acc in curves.items():
        config = cfg("none", seed=seed, epochs=3)
        write_hand_run(tmp_path, config, hand_rows(config, acc))
    summary = aggregate.summarize_runs(aggregate.load_results(tmp_path))
    assert summary.set_index("seed")["stuck"].to_dict() == {0: False, 1: True, 2: False}
    assert summary.set_index("seed").loc[0, "final_acc"] < aggregate.STUCK_BELOW


def test_included_extra_runs_cells_expect_the_runs_they_have(tmp_path):
    # the spec (2 seeds at 3 epochs) holds one run done; an earlier sweep left 2 runs at 2 epochs
    RunStore(tmp_path).write_spec('name = "hand"\nepochs = 3\nlr = 1e-3\nbatch_size = 256\n'
                                  'limit_train = 1024\nlimit_test = 512\nvariant = "none"\n'
                                  '[grid]\nseed = [0, 1]\n')  # fmt: skip
    for config in (cfg("none", epochs=3), cfg("none", epochs=2), cfg("none", epochs=2, seed=1)):
        write_hand_run(tmp_path, config, hand_rows(config, [0.5, 0.6, 0.7][: config.epochs]))
    study = aggregate.load_results(tmp_path, include_extra=True)
    cells = aggregate.aggregate_cells(aggregate.summarize_runs(study), study.expected)
    assert cells[["epochs", "n", "n_expected"]].values.tolist() == [[2, 2, 2], [3, 1, 2]]
