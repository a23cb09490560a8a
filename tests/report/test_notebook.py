"""bnstudy.report.notebook: the notebook logs' own numbers, the window rule against brute force,
the verdict per log on hand-made curves, the window's fine curve against numpy, and the
window figure's lines."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from studies import cfg, hand_points, hand_rows, write_hand_run  # noqa: E402

from bnstudy.results import aggregate
from bnstudy.report import notebook  # noqa: E402
from bnstudy.report.figures import plot_notebook_window  # noqa: E402

LOG_A, LOG_B = notebook.LOGS
# A train-accuracy curve where the answer is known: log A's 0.909 -> 0.919 is epochs 6-10
# exactly; log B's 0.897 -> 0.908 is closest at epochs 4-8 (0.897, 0.913).
TRAIN = [0.80, 0.85, 0.88, 0.897, 0.900, 0.909, 0.911, 0.913, 0.915, 0.919]
WINDOWS = {"A": (6, 10), "B": (4, 8)}


def test_the_logs_own_metrics():
    a, b = LOG_A.metrics(), LOG_B.metrics()  # 0.838, 0.821, 0.704, 0.842, 0.686 and 0.835, 0.802, 0.857, 0.801, 0.805
    assert a["mean_abs_change"] == pytest.approx((0.017 + 0.117 + 0.138 + 0.156) / 4)
    assert a["worst_drop"] == pytest.approx(0.842 - 0.686) and a["lowest_acc"] == 0.686
    assert (a["late_std"] == pytest.approx(np.std([0.704, 0.842, 0.686]))
            and a["gen_gap"] == pytest.approx(0.919 - 0.686))  # fmt: skip
    assert b["worst_drop"] == pytest.approx(0.857 - 0.801) and b["lowest_acc"] == 0.801
    assert b["mean_abs_change"] == pytest.approx((0.033 + 0.055 + 0.056 + 0.004) / 4)


def brute_force_window(train: list[float], first: float, last: float) -> int:
    """The 1-based first epoch of the 5 whose first and last train accuracy have the least
    sum of squared differences from (first, last), the earliest on a tie, by trying all."""
    errors = [(train[s] - first) ** 2 + (train[s + 4] - last) ** 2 for s in range(len(train) - 4)]
    return min(range(len(errors)), key=lambda s: (errors[s], s)) + 1


def test_the_window_rule_against_brute_force():
    for log in notebook.LOGS:
        assert notebook.best_window(np.array(TRAIN), log)[0] + 1 == WINDOWS[log.name][0]
        assert brute_force_window(TRAIN, log.train_first, log.train_last) == WINDOWS[log.name][0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        train = np.sort(rng.uniform(0.85, 0.95, rng.integers(5, 16)))
        for log in notebook.LOGS:
            start, mismatch = notebook.best_window(train, log)
            assert start + 1 == brute_force_window(list(train), log.train_first, log.train_last)
            expected = np.sqrt(((train[start] - log.train_first) ** 2 + (train[start + 4] - log.train_last) ** 2) / 2)
            assert mismatch == pytest.approx(expected)
    assert notebook.best_window(np.array(TRAIN[:4]), LOG_A) is None  # no 5 epochs, no window


def write_study(root, curves: dict, train=TRAIN, points: dict | None = None) -> aggregate.StudyResults:
    """One run at the notebook's setting per (variant, seed): curves[(variant, seed)] its
    test accuracy per epoch (train accuracy `train`), points[(variant, seed)] its 4 points
    an epoch where given."""
    for (variant, seed), acc in curves.items():
        fine = points is not None and (variant, seed) in points
        config = cfg(variant, seed=seed, epochs=len(acc), evals_per_epoch=4 if fine else 1)
        rows = hand_rows(config, acc, train_acc=train[: len(acc)])  # PreciseBN: 1 pp above, in the points too
        write_hand_run(root, config, rows, points=hand_points(config, points[(variant, seed)]) if fine else ())
    return aggregate.load_results(root)


def section(study: aggregate.StudyResults) -> notebook.NotebookSection:
    return notebook.notebook_section(study.epochs[aggregate.counts(study.epochs)], study.points)


def test_windows_follow_training_progress_not_epoch_numbers(tmp_path):
    """The drop at epoch 2 lies before both windows; the one at epoch 8 in both."""
    steady = [0.70, 0.60, 0.80, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87]
    study = write_study(tmp_path, {("bn_before", 0): steady, ("bn_before", 1): steady[:7] + [0.66, 0.86, 0.87]})
    epochs = study.epochs[aggregate.counts(study.epochs)]
    for log in notebook.LOGS:
        windows = notebook.find_windows(epochs, log)
        assert windows[["start", "end"]].drop_duplicates().values.tolist() == [list(WINDOWS[log.name])]
        assert windows["reached"].all()
    table = section(study).table
    # 0.84 at epoch 7, 0.66 at 8
    assert table.loc["log A: bn_before (2 runs)", "worst_drop"] == pytest.approx((0 + (0.84 - 0.66)) / 2)
    assert table.loc["log B: bn_before (2 runs)", "lowest_acc"] == pytest.approx((0.81 + 0.66) / 2)
    assert table.loc["log A: bn_before (2 runs)", "train_first"] == pytest.approx(0.909)


def test_a_study_too_short_for_a_log_says_so(tmp_path):
    """Train accuracy up to 0.900 after 5 epochs: short of log A's 0.919 and of log B's 0.908
    by more than the 0.5 pp tolerance; 8 epochs reach log B (0.913) but not log A."""
    short = section(write_study(tmp_path / "short", {("bn_before", 0): [0.8, 0.81, 0.82, 0.83, 0.84]}))
    assert short.verdicts == {"A": "too short", "B": "too short"} and short.table.empty
    assert "highest 90.0%" in short.absent  # one line for a section that would compare nothing
    longer = section(write_study(tmp_path / "longer",
                                 {("bn_before", 0): [0.8, 0.81, 0.82, 0.83, 0.84, 0.83, 0.82, 0.85]}))  # fmt: skip
    assert longer.absent is None and longer.verdicts == {"A": "too short", "B": "partly"}  # window 4-8: 0.84 -> 0.82
    assert list(longer.table.index) == ["log A: notebook", "log B: notebook", "log B: bn_before (1 run)"]
    assert len(longer.sentences) <= 3


@pytest.mark.parametrize("window_a, expected", [
    ([0.85, 0.84, 0.66, 0.85, 0.86], "reproduces"),  # a 19 pp drop: more than the log's 15.6 pp
    ([0.85, 0.84, 0.83, 0.85, 0.86], "partly"),  # 2 pp: a drop, but less
    ([0.80, 0.82, 0.83, 0.85, 0.86], "not"),  # no drop at all
])  # fmt: skip
def test_verdict_per_log(tmp_path, window_a, expected):
    """Seed 1's curve before log A's window (epochs 6-10) rises steadily; seed 0 never drops."""
    rising = [0.70, 0.72, 0.74, 0.76, 0.78]
    study = write_study(tmp_path, {("bn_before", 0): rising + [0.80, 0.81, 0.82, 0.83, 0.84],
                                   ("bn_before", 1): rising + window_a})  # fmt: skip
    assert section(study).verdicts["A"] == expected


def test_verdict_words_and_ranges():
    assert notebook.verdict(pd.Series([0.0, 0.2]), 0.156) == (
        "reproduces", "its 15.6 pp lies within our 2 seeds' range, 0.0 to 20.0 pp")
    assert notebook.verdict(pd.Series([0.17, 0.2]), 0.156)[0] == "reproduces"
    assert notebook.verdict(pd.Series([0.0, 0.156]), 0.156)[0] == "reproduces"
    assert notebook.verdict(pd.Series([0.0, 0.15]), 0.156) == (
        "partly", "our 2 seeds drop at most 15.0 pp against its 15.6 pp")
    assert notebook.verdict(pd.Series([0.0, 0.0]), 0.156)[0] == "not"


# 10 epochs of 4 points whose epoch ends rise steadily; in epoch 8 the second point dips to 0.60.
FINE = [e + f for e in np.linspace(0.70, 0.88, 10) for f in (-0.03, -0.02, -0.01, 0.0)]
FINE[7 * 4 + 1] = 0.60


@pytest.fixture
def fine_study(tmp_path):
    ends = FINE[3::4]
    return write_study(tmp_path, {("bn_before", 0): ends, ("bn_after", 0): ends}, points={("bn_before", 0): FINE})


def test_the_windows_fine_curve_against_numpy(fine_study):
    epochs = fine_study.epochs[aggregate.counts(fine_study.epochs)]
    run = epochs[epochs["variant"] == "bn_before"]
    got = notebook.window_metrics(run, fine_study.points, 6, 10)
    window = np.array(FINE[5 * 4 + 3 :])  # from the end of epoch 6 (its 4th point) to the end of epoch 10: 17 points
    assert len(window) == 17
    brute_force = max(window[i] - window[j] for j in range(17) for i in range(j))
    assert got["fine_worst_drop"] == pytest.approx(brute_force) == pytest.approx(0.82 - 0.60)  # epoch 7's end, the dip
    assert got["fine_mean_abs_change"] == pytest.approx(np.abs(np.diff(window)).mean())
    assert got["fine_lowest_acc"] == 0.60 and got["fine_worst_drop_precise_bn"] == pytest.approx(brute_force)
    assert got["worst_drop"] == 0 and got["lowest_acc"] == pytest.approx(FINE[5 * 4 + 3])  # the epoch ends: no drop
    found = section(fine_study)
    assert found.verdicts["A"] == "not"  # the verdict compares epoch ends with the log's epoch ends
    table = found.table
    assert table.loc["log A: bn_before (1 run)", "fine_worst_drop"] == pytest.approx(0.22)
    assert np.isnan(table.loc["log A: bn_after (1 run)", "fine_worst_drop"])  # no points: no fine curve


def test_the_window_figure_draws_each_runs_window(fine_study):
    fig = plot_notebook_window(fine_study, fine_study.epochs[aggregate.counts(fine_study.epochs)])
    try:
        panels = {ax.get_title(): ax for ax in fig.axes}
        assert set(panels) == {f"log {n}: {v}" for n, v in itertools.product("AB", ("bn_before", "bn_after"))}
        for name, (start, _) in WINDOWS.items():
            lines = [line for line in panels[f"log {name}: bn_before"].get_lines() if len(line.get_xdata())]
            first = (start - 1) * 4 + 3  # the index of the window's first point: its first epoch's end
            points = 100 * np.array(FINE[first : first + 17])
            drawn = {(tuple(np.round(line.get_xdata(), 6)), tuple(np.round(line.get_ydata(), 6))) for line in lines}
            curve = (tuple(np.round(np.arange(1, 5.01, 0.25), 6)), tuple(np.round(points, 6)))
            log = {log.name: log for log in notebook.LOGS}[name]
            stars = (tuple(range(1, 6)), tuple(np.round(100 * np.array(log.test_acc), 6)))
            precise = (curve[0], tuple(np.round(points + 1, 6)))  # PreciseBN: 1 pp above
            assert drawn == {curve, precise, stars}
            after = [line for line in panels[f"log {name}: bn_after"].get_lines() if len(line.get_xdata())]
            ends = 100 * np.array(FINE[3::4][start - 1 : start + 4])
            assert any(np.allclose(line.get_ydata(), ends) and np.allclose(line.get_xdata(), range(1, 6))
                       for line in after)  # fmt: skip
    finally:
        plt.close(fig)


def test_no_section_or_figure_without_the_notebooks_cell(tmp_path):
    """bn_after alone reaches both windows, but without bn_before there is nothing to compare."""
    study = write_study(tmp_path, {("bn_after", 0): [0.80, 0.81, 0.82, 0.83, 0.84, 0.85, 0.84, 0.66, 0.86, 0.87]})
    epochs = study.epochs[aggregate.counts(study.epochs)]
    assert len(notebook.window_curves(epochs, study.points))  # the windows are there
    assert section(study).absent.startswith("the study has no bn_before run at the notebook's setting")
    assert plot_notebook_window(study, epochs) is None
