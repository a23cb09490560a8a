"""bnstudy.report: metrics against hand-computed values, aggregation against pandas,
figures read back from their matplotlib artists, partial and broken studies, the CLI."""

from __future__ import annotations

import itertools
import math
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection, QuadMesh  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from bnstudy import cli, report  # noqa: E402
from bnstudy.runner import execute  # noqa: E402
from bnstudy.spec import RunConfig  # noqa: E402
from bnstudy.store import RunStore, now, run_metadata  # noqa: E402
from bnstudy.train import CSV_COLUMNS, identity_fields  # noqa: E402

# ---------------------------------------------------------------- hand-made runs


def hand_rows(config: RunConfig, test_acc, train_acc=None, precise=None, batch_stats=None, nan_from=None):
    """CSV rows for `config` with the given per-epoch accuracies; from epoch `nan_from` on
    (1-based) the losses are NaN, as in a diverged run."""
    n = len(test_acc)
    train_acc = train_acc if train_acc is not None else [a + 0.05 for a in test_acc]
    has_bn = config.variant != "none"
    precise = precise if precise is not None else ([a + 0.01 for a in test_acc] if has_bn else [None] * n)
    batch_stats = batch_stats if batch_stats is not None else ([a - 0.01 for a in test_acc] if has_bn else [None] * n)
    rows = []
    for e in range(n):
        broken = nan_from is not None and e + 1 >= nan_from
        rows.append({**identity_fields(config), "epoch": e + 1, "train_loss": math.nan if broken else 0.5,
                     "train_acc": train_acc[e], "test_loss": math.nan if broken else 0.6, "test_acc": test_acc[e],
                     "test_acc_batch_stats": batch_stats[e], "test_acc_precise_bn": precise[e],
                     "train_seconds": 2.0, "eval_seconds": 1.0, "samples_per_second": 100.0})  # fmt: skip
    return rows


def write_hand_run(root, config: RunConfig, rows, status="complete") -> None:
    RunStore(root).write_run(rows, run_metadata(config, status, "cpu", now(), now(), epochs_done=len(rows)))


def cfg(variant="bn_before", lr=1e-3, batch_size=256, seed=0, epochs=4, **kw) -> RunConfig:
    return RunConfig(variant=variant, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed, limit_train=1024,
                     limit_test=512, study="hand", **kw)  # fmt: skip


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


# ---------------------------------------------------------------- metrics of one curve


def test_curve_metrics_hand_example():
    m = report.curve_metrics([0.5, 0.7, 0.6, 0.8, 0.75])
    assert m["final_acc"] == 0.75 and m["best_acc"] == 0.8
    assert m["mean_abs_change"] == pytest.approx((0.2 + 0.1 + 0.2 + 0.05) / 4)
    assert m["worst_drop"] == pytest.approx(0.1)  # 0.7 -> 0.6 beats 0.8 -> 0.75
    # the last ceil(5/2) = 3 epochs 0.6, 0.8, 0.75 (mean 0.71667), population std
    assert m["late_std"] == pytest.approx(math.sqrt((0.11667**2 + 0.08333**2 + 0.03333**2) / 3), abs=1e-5)


def test_late_std_uses_last_half_of_an_even_count():
    assert report.curve_metrics([0.1, 0.2, 0.3, 0.4])["late_std"] == pytest.approx(0.05)  # [0.3, 0.4]


def test_ties_and_plateaus():
    flat = report.curve_metrics([0.8, 0.8, 0.8])
    assert (flat["mean_abs_change"], flat["worst_drop"], flat["late_std"], flat["best_acc"]) == (0, 0, 0, 0.8)
    tied_best = report.curve_metrics([0.8, 0.7, 0.8, 0.7])
    assert tied_best["worst_drop"] == pytest.approx(0.1)
    assert tied_best["mean_abs_change"] == pytest.approx(0.1)
    assert report.curve_metrics([0.1, 0.3, 0.3, 0.9])["worst_drop"] == 0  # never below an earlier best


def test_single_epoch_and_empty_curve():
    one = report.curve_metrics([0.6])
    assert one["final_acc"] == one["best_acc"] == 0.6
    assert math.isnan(one["mean_abs_change"]) and one["worst_drop"] == 0 and one["late_std"] == 0
    assert all(math.isnan(v) for v in report.curve_metrics([]).values())


def test_notebook_log_metrics():
    m = report.notebook_metrics()  # 0.838, 0.821, 0.704, 0.842, 0.686
    assert m["mean_abs_change"] == pytest.approx((0.017 + 0.117 + 0.138 + 0.156) / 4)
    assert m["worst_drop"] == pytest.approx(0.842 - 0.686)
    assert m["late_std"] == pytest.approx(np.std([0.704, 0.842, 0.686]))
    assert m["gen_gap"] == pytest.approx(0.919 - 0.686)


def test_run_metrics_gaps_and_diagnostics():
    rows = hand_rows(cfg(), [0.5, 0.6, 0.55], train_acc=[0.6, 0.7, 0.9], precise=[0.7, 0.7, 0.7],
                     batch_stats=[0.6, 0.5, 0.6])  # fmt: skip
    m = report.run_metrics(frame(rows))
    assert m["gen_gap"] == pytest.approx(0.9 - 0.55)
    assert m["ema_gap"] == pytest.approx(((0.7 - 0.5) + (0.7 - 0.6) + (0.7 - 0.55)) / 3)
    assert m["mean_abs_change_precise_bn"] == 0 and m["worst_drop_precise_bn"] == 0
    assert m["mean_abs_change_batch_stats"] == pytest.approx(0.1) and m["worst_drop_batch_stats"] == pytest.approx(0.1)
    assert m["epochs_used"] == 3


def test_run_metrics_without_bn_has_no_ema_gap():
    m = report.run_metrics(frame(hand_rows(cfg(variant="none"), [0.5, 0.6])))
    assert math.isnan(m["ema_gap"]) and math.isnan(m["mean_abs_change_precise_bn"])
    assert m["final_acc"] == 0.6


def test_diverged_run_counts_its_finite_epochs_only():
    # epoch 3's loss is NaN: its accuracy (NaN weights) must not count as a drop
    rows = hand_rows(cfg(), [0.5, 0.6, 0.1], train_acc=[0.55, 0.65, 0.1], nan_from=3)
    rows[2]["test_acc_precise_bn"] = math.nan
    m = report.run_metrics(frame(rows))
    assert m["epochs_used"] == 2
    assert (m["final_acc"], m["best_acc"], m["worst_drop"]) == (0.6, 0.6, 0)
    assert m["mean_abs_change"] == pytest.approx(0.1)
    assert m["gen_gap"] == pytest.approx(0.05)
    assert m["late_std"] == 0  # the last ceil(2/2) = 1 counted epoch
    nothing = report.run_metrics(frame(hand_rows(cfg(), [0.1], nan_from=1)))
    assert nothing["epochs_used"] == 0 and math.isnan(nothing["final_acc"]) and math.isnan(nothing["gen_gap"])


# ---------------------------------------------------------------- a hand-made partial study


@pytest.fixture
def partial_study(tmp_path):
    """3 variants x 2 seeds, lr 1e-3, batch 256: none s0 complete, none s1 failed,
    bn_before s0 diverged, bn_before s1 never run, bn_after s0 a CSV without its JSON,
    bn_after s1 a JSON saying complete without its CSV."""
    root = tmp_path / "partial"
    write_hand_run(root, cfg("none", seed=0), hand_rows(cfg("none", seed=0), [0.3, 0.5, 0.4, 0.6]))
    write_hand_run(root, cfg("none", seed=1), hand_rows(cfg("none", seed=1), [0.3]), status="failed")
    write_hand_run(root, cfg("bn_before", seed=0), hand_rows(cfg("bn_before", seed=0), [0.7, 0.8, 0.1], nan_from=3),
                   status="diverged")  # fmt: skip
    RunStore(root).csv_path(cfg("bn_after", seed=0).run_id).write_text("run_id\n")
    write_hand_run(root, cfg("bn_after", seed=1), hand_rows(cfg("bn_after", seed=1), [0.3]))
    RunStore(root).csv_path(cfg("bn_after", seed=1).run_id).unlink()
    return root


def test_partial_study_loads_and_says_what_is_missing(partial_study):
    study = report.load_results(partial_study)
    assert sorted(study.runs["run_id"]) == sorted([cfg("none", seed=0).run_id, cfg("bn_before", seed=0).run_id])
    reasons = {
        cfg("none", seed=1).run_id: "failed",
        cfg("bn_after", seed=0).run_id: "no JSON (in flight or killed)",
        cfg("bn_after", seed=1).run_id: "missing or unreadable CSV",
    }
    assert dict(zip(study.skipped["run_id"], study.skipped["reason"])) == reasons
    assert study.epochs["variant"].dtype == pd.CategoricalDtype(["none", "bn_before", "bn_after"], ordered=True)
    assert study.epochs["limit_train"].dtype == "Int64" and study.epochs["batch_size"].dtype == "int64"
    missing = report.missing_runs(study)
    assert dict(zip(missing["run_id"], missing["reason"])) == {**reasons, cfg("bn_before", seed=1).run_id: "not run"}
    summary = report.summarize_runs(study)
    assert summary.set_index("variant").loc["bn_before", "diverged"]
    assert summary.set_index("variant").loc["bn_before", "final_acc"] == 0.8
    cells = report.aggregate_cells(summary, study.expected)
    assert cells[["variant", "n", "n_expected", "n_diverged"]].astype({"variant": str}).values.tolist() == [
        ["none", 1, 2, 0],
        ["bn_before", 1, 2, 1],
        ["bn_after", 0, 2, 0],  # in the grid (its JSON says so) without a single done run
    ]
    assert cells["seed_std"].isna().all()  # one seed or none: no spread


def test_partial_study_report_and_cli(partial_study, capsys):
    assert cli.main(["report", str(partial_study)]) == 0
    out = capsys.readouterr().out
    assert "incomplete: none at learning rate 0.001, batch size 256: missing seed 1 (failed)" in out
    assert "incomplete: bn_before at learning rate 0.001, batch size 256: missing seed 1 (not run)" in out
    text = (partial_study / "report.md").read_text()
    assert "## Incomplete cells" in text and "3 of 3 cells lack runs" in text
    assert ("2 of 6 done (1 complete, 1 diverged); 1 failed; 2 other run files skipped (1 no JSON (in flight or "
            "killed), 1 missing or unreadable CSV)") in text  # fmt: skip
    assert "1 of 2 runs diverged: bn_before at learning rate 0.001, batch size 256, seed 0 (after 2 finite epochs)" in text
    summary = pd.read_csv(partial_study / "summary.csv")
    assert len(summary) == 2 and summary["diverged"].dtype == bool
    for table in re.findall(r"(?:^\|.*\|\n)+", text, flags=re.M):  # every Markdown table is rectangular
        assert len({line.count("|") for line in table.splitlines()}) == 1


def test_spec_copy_defines_the_grid(partial_study):
    spec = ('name = "hand"\nepochs = 4\nlr = 1e-3\nbatch_size = 256\nlimit_train = 1024\nlimit_test = 512\n'
            '[grid]\nvariant = ["none", "bn_before"]\nseed = [0, 1, 2]\n')  # fmt: skip
    (partial_study / "spec.toml").write_text(spec)
    study = report.load_results(partial_study)
    assert study.grid_source == "from spec.toml"
    assert len(study.expected) == 6  # seed 2 appears in no run file, only in the spec; bn_after is not in it
    assert set(report.missing_runs(study)["seed"]) == {1, 2}
    assert "bn_after" not in set(report.missing_runs(study)["variant"])


def test_study_where_every_run_diverged_at_once(tmp_path, capsys):
    for variant in ("none", "bn_before"):
        write_hand_run(tmp_path, cfg(variant), hand_rows(cfg(variant), [0.1], nan_from=1), status="diverged")
    assert cli.main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "2 of 2 runs diverged" in text and "None: no run has an epoch with finite loss and accuracy." in text
    assert "reference notebook" not in text and not (tmp_path / "figures").exists()


def test_single_epoch_study_findings(tmp_path):
    for variant, acc in (("none", 0.4), ("bn_before", 0.7)):
        config = cfg(variant, epochs=1)
        write_hand_run(tmp_path, config, hand_rows(config, [acc]))
    study = report.load_results(tmp_path)
    summary = report.summarize_runs(study)
    cells = report.aggregate_cells(summary, study.expected)
    sentences = report.findings(summary, cells, study.epochs[report.counts(study.epochs)])
    assert "No run's test accuracy ever fell below an earlier best." in sentences
    assert "The best final test accuracy is 70.0% (bn_before at learning rate 0.001, batch size 256), the worst 40.0% " \
           "(none at learning rate 0.001, batch size 256)." in sentences  # fmt: skip
    assert not any("mean |change| of" in s for s in sentences)  # undefined for one epoch
    assert report.notebook_comparison(summary) is None  # one epoch shows no swing to compare


def test_seeds_with_equal_accuracy_draw_zero_length_bars(tmp_path):
    """Three seeds stuck at 10% (a model that never learns): their mean rounds above their
    max, and the scatter's range bars must still be drawn, with length 0."""
    for seed in range(3):
        config = cfg("none", seed=seed)
        write_hand_run(tmp_path, config, hand_rows(config, [0.1, 0.1, 0.1, 0.1]))
    assert cli.main(["report", str(tmp_path)]) == 0
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert cells["final_acc_mean"].iloc[0] > 0.1  # the rounding this test is about
    assert (tmp_path / "figures" / "accuracy_vs_volatility.png").is_file()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "only_failed"])
def test_bad_study_folder_is_one_error_line(tmp_path, capsys, kind):
    target = tmp_path / "study"
    if kind == "file":
        target.write_text("x")
    elif kind == "empty":
        (target / "runs").mkdir(parents=True)
    elif kind == "only_failed":
        write_hand_run(target, cfg(), hand_rows(cfg(), [0.3]), status="failed")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert cli.main(["report", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("bnstudy: error: ")
    assert str(target) in captured.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


# ---------------------------------------------------------------- a small real study

VARIANTS = ["none", "bn_before", "bn_after"]


@pytest.fixture(scope="session")
def real_study(tmp_path_factory, small_data):
    """12 tiny real runs: 3 variants x lr {1e-3, 1e-2} x batch 256 x seeds {0, 1}, 3 epochs
    on the first 1,024 / 512 images; includes the notebook's cell (bn_before, adam, 1e-3, 256)."""
    root = tmp_path_factory.mktemp("real") / "study"
    store = RunStore(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # runs this small gain nothing from a second thread, and lose much on a busy box
    try:
        for variant, lr, seed in itertools.product(VARIANTS, (1e-3, 1e-2), (0, 1)):
            config = RunConfig(variant=variant, lr=lr, batch_size=256, epochs=3, seed=seed,
                               limit_train=len(small_data.train_x), limit_test=len(small_data.test_x),
                               precise_bn_samples=256, study="real")  # fmt: skip
            store.write_run(*execute(config, small_data))
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="session")
def real_tables(real_study):
    study = report.load_results(real_study)
    summary = report.summarize_runs(study)
    return study, summary, report.aggregate_cells(summary, study.expected)


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
    direct = summary.astype({"variant": str}).groupby(keys)[report.ALL_METRICS].agg(["mean", "std"])
    ours = cells.astype({"variant": str}).set_index(keys)
    for metric in report.ALL_METRICS:
        for stat in ("mean", "std"):
            pd.testing.assert_series_equal(ours[f"{metric}_{stat}"].sort_index(), direct[(metric, stat)].sort_index(),
                                           check_names=False)  # fmt: skip
    pd.testing.assert_series_equal(ours["seed_std"].sort_index(), direct[("final_acc", "std")].sort_index(),
                                   check_names=False)  # fmt: skip
    assert (ours["n"] == 2).all() and (ours["n_expected"] == 2).all()


@pytest.fixture(scope="module")
def figures(real_tables):
    drawn = report.draw_figures(*real_tables)
    yield drawn
    for fig in drawn.values():
        plt.close(fig)


def variant_of(color) -> str:
    """The variant whose fixed palette colour `color` is."""
    return {v: k for k, v in report.PALETTE.items()}[to_hex(color)]


def facet_axes(fig):
    """{(lr, batch_size): axes} of a line figure: rows = learning rates ascending, one column (batch 256)."""
    assert len(fig.axes) == 2
    return dict(zip([(1e-3, 256), (1e-2, 256)], fig.axes))


def test_accuracy_curves_plot_the_seed_means_and_ranges(figures, real_tables):
    study, _, _ = real_tables
    fig = figures["accuracy_curves"]
    for (lr, bs), ax in facet_axes(fig).items():
        assert ax.get_ylabel() == "test accuracy (%)"
        by = facet_cell(study, lr, bs).groupby(["variant", "epoch"])["test_acc"]
        lines = {variant_of(line.get_color()): line for line in ax.get_lines() if len(line.get_xdata())}
        assert set(lines) == set(VARIANTS)
        for variant, line in lines.items():
            np.testing.assert_allclose(line.get_ydata(), 100 * by.mean()[variant].to_numpy())
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 3
        for band in bands:
            variant = variant_of(band.get_facecolor()[0][:3])
            ys = band.get_paths()[0].vertices[:, 1]
            assert ys.min() == pytest.approx(100 * by.min()[variant].min())
            assert ys.max() == pytest.approx(100 * by.max()[variant].max())
    assert "band: lowest to highest seed" in fig.get_suptitle()


def test_heatmaps_show_the_cell_means(figures, real_tables):
    _, _, cells = real_tables
    for metric in ("mean_abs_change", "worst_drop"):
        fig = figures[f"stability_{metric}"]
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert (fig.get_supxlabel(), fig.get_supylabel()) == ("batch size (images)", "learning rate")
        assert [ax.get_title() for ax in panels] == VARIANTS
        for ax in panels:
            mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
            block = cells[cells["variant"] == ax.get_title()].sort_values("lr", ascending=False)  # top row: largest lr
            expected = 100 * block[f"{metric}_mean"].to_numpy()
            np.testing.assert_allclose(np.asarray(mesh.get_array()).ravel(), expected)
            assert [t.get_text() for t in ax.texts] == [f"{v:.1f}" for v in expected]
            assert [t.get_text() for t in ax.get_yticklabels()] == ["0.01", "0.001"]


def test_scatter_has_one_point_per_cell(figures, real_tables):
    _, _, cells = real_tables
    ax = figures["accuracy_vs_volatility"].axes[0]
    points = next(c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets()))
    got = sorted((variant_of(color[:3]), *np.round(xy, 9))
                 for xy, color in zip(points.get_offsets(), points.get_facecolors()))  # fmt: skip
    want = sorted(zip(cells["variant"].astype(str), np.round(100 * cells["mean_abs_change_mean"], 9),
                      np.round(100 * cells["final_acc_mean"], 9)))  # fmt: skip
    assert got == want
    assert "pp" in ax.get_xlabel() and "%" in ax.get_ylabel()


def matched_columns(ax, cell: pd.DataFrame, columns: list[str]) -> list[tuple[str, str]]:
    """(variant, column) of each line in `ax`: the variant from its colour, the column whose
    mean over seeds (in %) the line's y values equal."""
    matched = []
    for line in (line for line in ax.get_lines() if len(line.get_xdata())):
        variant = variant_of(line.get_color())
        means = cell[cell["variant"] == variant].groupby("epoch")[columns].mean()
        hits = [c for c in columns if np.allclose(line.get_ydata(), 100 * means[c].to_numpy())]
        assert hits, (variant, line.get_ydata())
        matched.append((variant, hits[0]))
    return matched


def facet_cell(study, lr, bs) -> pd.DataFrame:
    epochs = study.epochs
    return epochs[(epochs["lr"] == lr) & (epochs["batch_size"] == bs)].astype({"variant": str})


def test_eval_modes_plot_the_three_statistics_of_bn_variants(figures, real_tables):
    study, _, _ = real_tables
    fig = figures["eval_modes"]
    columns = list(report.EVAL_MODES)
    for (lr, bs), ax in facet_axes(fig).items():
        matched = matched_columns(ax, facet_cell(study, lr, bs), columns)
        assert sorted(matched) == sorted((v, c) for v in ["bn_before", "bn_after"] for c in columns)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(report.EVAL_MODES.values()) <= set(legend) and "none" not in legend


def test_train_vs_test_plots_both_accuracies(figures, real_tables):
    study, _, _ = real_tables
    for (lr, bs), ax in facet_axes(figures["train_vs_test"]).items():
        matched = matched_columns(ax, facet_cell(study, lr, bs), ["train_acc", "test_acc"])
        assert sorted(matched) == sorted((v, c) for v in VARIANTS for c in ["train_acc", "test_acc"])


def test_variant_colours_are_the_same_in_every_figure(figures):
    for name, fig in figures.items():
        for ax in fig.axes:
            for line in ax.get_lines():
                if len(line.get_xdata()):
                    assert to_hex(line.get_color()) in report.PALETTE.values(), name


# ---------------------------------------------------------------- the whole report


@pytest.fixture(scope="module")
def written(real_study):
    assert cli.main(["report", str(real_study)]) == 0
    return real_study


def test_report_files_open_in_pandas_and_viewers(written):
    summary = pd.read_csv(written / "summary.csv")
    cells = pd.read_csv(written / "cells.csv")
    assert len(summary) == 12 and len(cells) == 6
    assert {"run_id", "variant", "lr", "seed", "diverged", "epochs_used", *report.ALL_METRICS} <= set(summary.columns)
    assert {"n", "n_expected", "n_diverged", "seed_std", "final_acc_mean", "worst_drop_std"} <= set(cells.columns)
    text = (written / "report.md").read_text()
    links = re.findall(r"\]\((figures/[^)]+)\)", text)
    assert len(links) == 2 * len(report.FIGURES)  # each figure embedded as PNG and linked as SVG
    for link in links:
        assert (written / link).stat().st_size > 0
    image = plt.imread(written / "figures" / "accuracy_curves.png")
    assert image.shape[0] > 300 and image.shape[1] > 300


def test_report_findings_are_the_studys_numbers(written, real_tables):
    _, summary, cells = real_tables
    text = (written / "report.md").read_text()
    worst = summary.loc[summary["worst_drop"].idxmax()]
    if worst["worst_drop"] > 0:
        assert f"The largest worst drop of any run is {100 * worst['worst_drop']:.1f} pp" in text
    best = cells.loc[cells["final_acc_mean"].idxmax()]
    assert f"The best final test accuracy is {100 * best['final_acc_mean']:.1f}%" in text
    assert "No run diverged (12 runs)." in text
    assert "Grid**: variant (none, bn_before, bn_after) × lr (0.001, 0.01) × seed (0, 1)" in text


def test_notebook_comparison_only_with_the_notebooks_cell(written, real_tables, partial_study):
    _, summary, _ = real_tables
    text = (written / "report.md").read_text()
    ours = summary[(summary["variant"] == "bn_before") & (summary["lr"] == 1e-3)]
    assert "## The reference notebook's test-accuracy swings" in text
    assert "mean |change| 10.7 pp, worst drop 15.6 pp" in text  # the notebook's own log
    assert (f"This study's bn_before runs at that setting (2 seeds) have mean |change| "
            f"{100 * ours['mean_abs_change'].mean():.1f} pp") in text  # fmt: skip
    assert "3 epochs instead of 5 and 1,024 training images instead of 60,000" in text
    elsewhere = report.summarize_runs(report.load_results(partial_study))
    assert report.notebook_comparison(elsewhere[elsewhere["variant"] == "none"]) is None
