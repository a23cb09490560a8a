"""bnstudy.report.figures: every figure read back from its matplotlib artists and compared with
the study's tables."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection, QuadMesh  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from studies import VARIANTS, cfg, draw_figures, hand_rows, write_hand_run  # noqa: E402

from bnstudy.results import aggregate
from bnstudy import cli  # noqa: E402
from bnstudy.results.aggregate import EVAL_MODES  # noqa: E402
from bnstudy.report.analysis import analyze  # noqa: E402
from bnstudy.report.figures import (  # noqa: E402
    DRAWERS,
    FIGURES,
    PALETTE,
    PANEL,
    draw_figure,
    freeze_layout,
    save_figure,
    write_figures,
)


@pytest.fixture(autouse=True)
def _close_new_figures():
    """Close the figures a test opened (the module's `figures` stay open for the next tests)."""
    before = set(plt.get_fignums())
    yield
    for number in set(plt.get_fignums()) - before:
        plt.close(number)


@pytest.fixture(scope="module")

def figures(real_analysis):
    drawn = draw_figures(real_analysis)
    yield drawn
    for fig in drawn.values():
        plt.close(fig)


def variant_of(color) -> str:
    """The variant whose fixed palette colour `color` is."""
    return {v: k for k, v in PALETTE.items()}[to_hex(color)]


def facet_axes(fig):
    """{(lr, batch_size): axes} of a line figure: rows = learning rates ascending, one column (batch 256)."""
    assert len(fig.axes) == 2
    return dict(zip([(1e-3, 256), (1e-2, 256)], fig.axes))


def facet_cell(study, lr, bs) -> pd.DataFrame:
    epochs = study.epochs
    return epochs[(epochs["lr"] == lr) & (epochs["batch_size"] == bs)].astype({"variant": str})


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
            expected = 100 * block[f"{metric}_mean"].to_numpy()  # NaN: every run of the cell stuck at chance
            np.testing.assert_allclose(np.ma.filled(mesh.get_array().astype(float), np.nan).ravel(), expected)
            assert [t.get_text() for t in ax.texts] == [f"{v:.1f}" for v in expected if not np.isnan(v)]
            assert [t.get_text() for t in ax.get_yticklabels()] == ["0.01", "0.001"]


def test_scatter_has_one_point_per_cell(figures, real_tables):
    _, _, cells = real_tables
    ax = figures["accuracy_vs_volatility"].axes[0]
    points = next(c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets()))
    got = sorted((variant_of(color[:3]), *np.round(xy, 9))
                 for xy, color in zip(points.get_offsets(), points.get_facecolors()))  # fmt: skip
    shown = cells[cells["mean_abs_change_mean"].notna()]  # a cell whose runs are all stuck has no volatility
    want = sorted(zip(shown["variant"].astype(str), np.round(100 * shown["mean_abs_change_mean"], 9),
                      np.round(100 * shown["final_acc_mean"], 9)))  # fmt: skip
    assert got == want
    assert "pp" in ax.get_xlabel() and "%" in ax.get_ylabel()


def test_eval_modes_plot_the_three_statistics_of_bn_variants(figures, real_tables):
    study, _, _ = real_tables
    fig = figures["eval_modes"]
    columns = list(EVAL_MODES)
    for (lr, bs), ax in facet_axes(fig).items():
        matched = matched_columns(ax, facet_cell(study, lr, bs), columns)
        assert sorted(matched) == sorted((v, c) for v in ["bn_before", "bn_after"] for c in columns)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(EVAL_MODES.values()) <= set(legend) and "none" not in legend


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
                    assert to_hex(line.get_color()) in PALETTE.values(), name


def test_seeds_with_equal_accuracy_draw_zero_length_bars(tmp_path):
    """Three seeds flat at 20% (the lowest accuracy that is not stuck at chance): their mean
    rounds above their max, and the scatter's range bars must still be drawn, with length 0."""
    for seed in range(3):
        config = cfg("none", seed=seed)
        write_hand_run(tmp_path, config, hand_rows(config, [0.2, 0.2, 0.2, 0.2]))
    assert cli.main(["report", str(tmp_path)]) == 0
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert cells["final_acc_mean"].iloc[0] > 0.2 and cells["n_stuck"].iloc[0] == 0  # the rounding this test is about
    assert (tmp_path / "figures" / "accuracy_vs_volatility.png").is_file()


def hand_analysis(root):
    """The Analysis of the hand-made study in `root`."""
    return analyze(aggregate.load_results(root))


def test_a_one_epoch_study_draws_what_one_epoch_shows(tmp_path):
    """No change between epochs to show: no mean |change| heat map, no scatter (seaborn
    crashed drawing its legend); the line figures get a single tick at epoch 1."""
    for variant in ("none", "bn_before"):
        config = cfg(variant, epochs=1)
        write_hand_run(tmp_path, config, hand_rows(config, [0.6]))
    drawn = draw_figures(hand_analysis(tmp_path))
    assert sorted(drawn) == sorted(["accuracy_curves", "stability_worst_drop", "eval_modes", "train_vs_test"])
    for name in ("accuracy_curves", "eval_modes", "train_vs_test"):
        assert [t.get_text() for t in drawn[name].axes[0].get_xticklabels()] == ["1"], name


def test_scatter_leaves_out_cells_without_a_change_and_says_so(tmp_path):
    steady, short = cfg("none"), cfg("bn_before")
    write_hand_run(tmp_path, steady, hand_rows(steady, [0.5, 0.6, 0.7, 0.8]))
    write_hand_run(tmp_path, short, hand_rows(short, [0.5, 0.1], nan_from=2), status="diverged")  # one finite epoch
    fig = draw_figure(hand_analysis(tmp_path), "accuracy_vs_volatility")
    ax = fig.axes[0]
    points = next(c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets()))
    np.testing.assert_allclose(points.get_offsets(), [[10.0, 80.0]])
    assert "1 cell with a single finite epoch or only stuck runs left out" in ax.get_title()


BOTH = ("none", "bn_before")
# a remedies study's 8 arms: titles wider than panels
REMEDY_ROWS = [("none", {}), ("bn_before", {}), ("bn_before", {"norm": "group"}),
               ("bn_before", {"ghost_batch_size": 32}), ("bn_before", {"frozen_bn_epochs": 2}),
               ("bn_before", {"bn_momentum": 0.3}), ("bn_before", {"pool": "avg"}), ("bn_before", {"norm": "layer"}),
               ("bn_before", {"norm": "batchrenorm"})]


@pytest.mark.parametrize("runs", [[(v, row) for v in BOTH for row in ({"lr": 1e-4}, {"lr": 1e-3}, {"lr": 1e-2})],
                                  [(v, row) for v in BOTH for row in ({"bn_momentum": 0.01}, {"bn_momentum": 0.1})],
                                  REMEDY_ROWS],
                         ids=["row names in the margin", "row names in titles",
                              "titles wider than a panel"])  # fmt: skip
def test_a_grid_of_panels_keeps_its_texts_apart(tmp_path, runs):
    """The line figures are laid out by hand (finish_grid): each panel PANEL inches, and no
    panel, title, row name in the margin, legend or figure title on another. With a varying
    BN momentum the row names are long, and each panel's two-line title names its row; in a
    remedies study a title names five settings, wider than its panel (the legend sat on one)."""
    for variant, row in runs:
        config = cfg(variant, **row)
        write_hand_run(tmp_path, config, hand_rows(config, [0.5, 0.7, 0.6, 0.8]))
    for name, fig in draw_figures(hand_analysis(tmp_path)).items():
        if name not in ("accuracy_curves", "eval_modes", "train_vs_test"):
            continue
        renderer = fig.canvas.get_renderer()
        panels = [ax.patch.get_window_extent(renderer) for ax in fig.axes]
        assert all((box.width, box.height) == pytest.approx((fig.dpi * PANEL[0], fig.dpi * PANEL[1])) for box in panels)
        texts = [ax.title for ax in fig.axes if ax.get_title()] + [t for ax in fig.axes for t in ax.texts]
        boxes = panels + [t.get_window_extent(renderer) for t in texts] + [fig.legends[0].get_window_extent(renderer),
                                                                          fig._suptitle.get_window_extent(renderer)]
        assert len(texts) >= len(fig.axes), name  # each panel titled, or named in the margin
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), (name, a, b)


def test_heat_map_values_read_on_their_cells(tmp_path):
    """The darkest cell (the largest value) is annotated in white, a light one in dark grey."""
    for variant, acc in {"none": [0.5, 0.6, 0.7, 0.8], "bn_before": [0.6, 0.8, 0.5, 0.85]}.items():
        write_hand_run(tmp_path, cfg(variant), hand_rows(cfg(variant), acc))  # worst drops 0 and 30 pp
    fig = draw_figure(hand_analysis(tmp_path), "stability_worst_drop")
    colours = {ax.get_title(): [(t.get_text(), to_hex(t.get_color())) for t in ax.texts] for ax in fig.axes if ax.texts}
    assert colours == {"none": [("0.0", to_hex("0.15"))], "bn_before": [("30.0", to_hex("white"))]}


def test_heat_map_titles_naming_other_settings_do_not_overlap(tmp_path):
    """One batch size and a varying BN momentum: narrow cells under long titles, "bn_before (BN
    momentum 0.01)" beside "bn_after (BN momentum 0.01)" (they overlapped)."""
    for variant, momentum in itertools.product(("bn_before", "bn_after"), (0.01, 0.1)):
        config = cfg(variant, bn_momentum=momentum)
        write_hand_run(tmp_path, config, hand_rows(config, [0.5, 0.7, 0.6, 0.8]))
    fig = draw_figure(hand_analysis(tmp_path), "stability_worst_drop")
    freeze_layout(fig)
    panels = [ax for ax in fig.axes if ax.get_title()]  # not the colour bar
    assert {ax.get_title() for ax in panels} >= {"bn_before (BN momentum 0.01)", "bn_after (BN momentum 0.01)"}
    renderer = fig.canvas.get_renderer()
    boxes = sorted((ax.title.get_window_extent(renderer) for ax in panels), key=lambda box: (box.y0, box.x0))
    for left, right in zip(boxes, boxes[1:]):  # side by side in a row: apart
        assert left.y0 != right.y0 or left.x1 < right.x0, (left, right)


def test_each_file_draws_its_figure_once_and_shows_all_of_it(real_analysis, tmp_path, monkeypatch):
    """Speed without loss: a figure is laid out once, each of its files is one draw (no
    second draw for a tight bounding box), and each PNG shows all that is drawn, a title
    wider than the figure included, with savefig's padding (what bbox_inches="tight" did)."""
    drawn = draw_figures(real_analysis)
    draws, real_draw = {}, Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda fig, renderer: draws.update({fig: draws.get(fig, 0) + 1})
                        or real_draw(fig, renderer))  # fmt: skip
    for name, fig in drawn.items():
        save_figure(fig, tmp_path / f"{name}.png")
    pad = plt.rcParams["savefig.pad_inches"]
    for name, fig in drawn.items():
        assert draws[fig] == len(list(tmp_path.glob(f"{name}.*"))), name
        box = fig.get_tightbbox(FigureCanvasAgg(fig).get_renderer())  # inches, as laid out (closed: a new canvas)
        height, width = plt.imread(tmp_path / f"{name}.png").shape[:2]
        assert width == pytest.approx(150 * (box.width + 2 * pad), abs=2), name
        assert height == pytest.approx(150 * (box.height + 2 * pad), abs=2), name


def test_a_remedies_study_leads_with_its_remedies_forest_plot(tmp_path):
    """Each remedy's claims drawn as their values: a row per remedy, a panel per metric plus
    the worst drop against PreciseBN, each point the claim's mean (pp) and its bar the
    interval; the report shows this figure first."""
    from bnstudy.report.remedies import REMEDY
    from bnstudy.report.render import lead_figure

    for seed in range(6):
        base, group = cfg("bn_before", seed=seed), cfg("bn_before", seed=seed, norm="group")
        write_hand_run(tmp_path, base, hand_rows(base, [0.5, 0.8, 0.7 - 0.01 * seed, 0.85]))
        no_stats = [None] * 4  # GroupNorm keeps no running statistics: no BN diagnostics
        write_hand_run(tmp_path, group, hand_rows(group, [0.5, 0.7, 0.8, 0.84 - 0.01 * seed], precise=no_stats,
                                                  batch_stats=no_stats))  # fmt: skip
    a = hand_analysis(tmp_path)
    drawn = draw_figures(a)
    fig = drawn["remedies"]
    claims = a.claims[a.claims["family"] == REMEDY]
    assert [ax.get_title() for ax in fig.axes] == ["worst drop", "final accuracy", "best accuracy",
                                                    "worst drop, against PreciseBN"]  # fmt: skip
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["normalization group"]
    for ax, claim in zip(fig.axes, claims.itertuples()):
        bar, point = ax.lines[0], ax.lines[1]
        np.testing.assert_allclose(bar.get_xdata(), [100 * claim.low, 100 * claim.high])
        np.testing.assert_allclose(point.get_xdata(), [100 * claim.mean])
    assert lead_figure(a, list(drawn)) == "remedies"


def test_figures_drawn_by_several_processes_are_the_ones_one_process_draws(real_analysis, tmp_path):
    """The same names, and the same bytes in every PNG, whichever process drew it."""
    assert list(DRAWERS) == list(FIGURES)  # every figure has its drawer, in the report's order
    alone = write_figures(real_analysis, tmp_path / "one", jobs=1)
    together = write_figures(real_analysis, tmp_path / "two", jobs=2)
    assert alone == together and len(alone) > 2
    for name in alone:
        assert (tmp_path / "one" / f"{name}.png").read_bytes() == (tmp_path / "two" / f"{name}.png").read_bytes()
