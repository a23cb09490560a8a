"""The report's figures (FIGURES), drawn from a study's tables with matplotlib (in seaborn's
style; the scatter plot is seaborn's), saved as PNG, each laid out once and drawn once.
Grids of panels and heat maps are plain matplotlib axes: seaborn's relplot and heatmap draw
the whole figure while building it (to lay out its legend, to check its tick labels), up to
four draws before the report's own. The grids of line panels are spaced by hand
(finish_grid), the other figures by constrained layout (freeze_layout runs it once)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, never a window: the report runs headless

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from seaborn.utils import relative_luminance  # noqa: E402

from bnstudy.results.aggregate import CELL_KEYS, CONFIG_KEYS, EVAL_MODES, StudyResults  # noqa: E402
from bnstudy.stats.claims import Verdict  # noqa: E402
from bnstudy.results.metrics import METRICS  # noqa: E402
from bnstudy.report.forked import map_forked  # noqa: E402
from bnstudy.report.notebook import LOGS, WINDOW, has_notebook_cell, window_curves  # noqa: E402

if TYPE_CHECKING:
    from bnstudy.report.analysis import Analysis
from bnstudy.config.settings import TEST_SIZE, TRAIN_SIZE  # noqa: E402
from bnstudy.config.variants import BN_VARIANTS, VARIANTS, palette  # noqa: E402
from bnstudy.report.remedies import BASELINE_NAME, REMEDY  # noqa: E402
from bnstudy.report.wording import extra_axes, plural, setting_text  # noqa: E402
from bnstudy.results.runfiles import RunStatus  # noqa: E402

# One colour per variant in every figure, from its entry in bnstudy.config.variants.
PALETTE = palette(VARIANTS)

FIGURES = {  # name: (heading, what it shows)
    "accuracy_curves": ("Test accuracy per epoch", "One panel per learning rate and batch size, one line per "
                        "variant (mean over seeds), band: lowest to highest seed."),
    "stability_mean_abs_change": ("Volatility: mean |change| per epoch", "Per variant, the cells' mean over "
                                  "seeds of the mean absolute change of test accuracy between consecutive epochs."),
    "stability_worst_drop": ("Volatility: worst drop", "Per variant, the cells' mean over seeds of the largest "
                             "fall of test accuracy below an earlier best."),
    "accuracy_vs_volatility": ("Final accuracy against volatility", "One point per cell (mean over seeds, bars from "
                               "the lowest to the highest seed): up and to the left is accurate and steady."),
    "eval_modes": ("Which BN statistics the test accuracy uses", "The BN variants' test accuracy with the running "
                   "statistics (what eval mode uses), PreciseBN statistics and each test batch's own statistics."),
    "train_vs_test": ("Train against test accuracy", "Train accuracy (train mode, during the epoch) and test "
                      "accuracy (eval mode) per epoch, mean over seeds: the distance between them is the "
                      "generalization gap."),
    "comparisons": ("Paired differences between variants", "One panel per metric, each on its own scale, one row "
                    "per pair of variants: the mean difference (first minus second) over runs that differ in the "
                    "variant only, same cell and seed, with its paired t 95% interval; runs stuck at chance are "
                    "left out. Red: the first clearly higher, blue: clearly lower (Holm-adjusted sign-flip p below "
                    "0.05), grey: no claim. The colour is the test's verdict, the bar the t interval's: near the edge "
                    "they can disagree."),
    "remedies": ("Which remedy removes the swings", "One row per remedy (one setting of bn_before changed), one "
                 "panel per metric: the mean paired difference, remedy minus bn_before with BatchNorm (same seed), "
                 "with its paired t 95% interval; the last panel compares the remedy's worst drop with the "
                 "baseline's after PreciseBN. Colours as in the paired differences between variants."),
    "notebook_window": ("The notebook's window", "Per notebook log (rows) and variant (columns), each run's test "
                        "accuracy over its window (the 5 consecutive epochs whose first and last train accuracy "
                        "best match the log's first and last), at every point of its fine curve where it has one, "
                        "else at the epoch ends: eval mode and PreciseBN, one line per seed; black stars: the log's "
                        "own test accuracy."),
}  # fmt: skip
# Why a figure can be left out of a report: it would have nothing to show.
NO_CHANGE = ("no run that left chance has two finite epochs, so there is no change from one epoch to the next "
             "to show")  # fmt: skip
UNDRAWN = {"stability_mean_abs_change": NO_CHANGE, "accuracy_vs_volatility": NO_CHANGE,
           "stability_worst_drop": "every run is stuck at chance (best test accuracy below 20%)",
           "eval_modes": "the study has no BN run",
           "comparisons": "no two variants have runs that pair (same cell and seed, two finite epochs, not stuck)",
           "remedies": "the study changes no remedy setting of bn_before (norm, ghost batch size, frozen BN epochs, "
                       "pooling)",
           "notebook_window": "no bn_before run at the notebook's setting, or no run there reaches "
                              "the train accuracy of either of its logs"}  # fmt: skip


def with_facets(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(frame plus `facet_row` = learning rate and any other varying setting, `facet_col` =
    batch size, as labels; the row and column label orders, sorted by value)."""
    extra = extra_axes(frame)
    frame = frame.sort_values(["lr", *extra, "batch_size"])
    rows = frame[["lr", *extra]].apply(lambda r: ", ".join(setting_text(k, r[k]) for k in r.index), axis=1)
    frame = frame.assign(facet_row=rows, facet_col=frame["batch_size"].map(lambda b: setting_text("batch_size", b)))
    return frame, list(dict.fromkeys(frame["facet_row"])), list(dict.fromkeys(frame["facet_col"]))


def variants_in(frame: pd.DataFrame) -> list[str]:
    """The variants present in frame, in VARIANTS order (the order of every legend)."""
    present = set(frame["variant"].astype(str))
    return [v for v in VARIANTS if v in present]


def data_note(study: StudyResults) -> str:
    """What every figure's title says about the data: "study demo: 3,000 training / 1,000 test images"."""

    def images(column: str, full: int) -> str:
        values = study.runs[column].unique()
        return "varying" if len(values) > 1 else f"{full if pd.isna(values[0]) else int(values[0]):,}"

    train, test = images("limit_train", TRAIN_SIZE), images("limit_test", TEST_SIZE)
    return f"study {study.name}: {train} training / {test} test images"


MARGIN_TITLE_CHARS = 24  # the longest row name drawn in the right margin
# The line style of each level of a line figure's second grouping (BN statistics; train or test), in its order.
LINE_STYLES = ("-", (0, (4, 1.5)), (0, (1, 1)))
STYLE_COLOUR = "0.2"  # a line style's legend sample: no variant's colour
MEAN_MARKERS = {"marker": "o", "markersize": 4, "markeredgecolor": "w", "markeredgewidth": 0.75}  # a mean's points
Legend = dict[str, list[tuple[str, dict]]]  # per section title, its entries: (label, Line2D properties of the sample)
PANEL, LONE_PANEL = (3.2, 2.3), (4.6, 3.1)  # inches: a panel's axes in a grid, and when it is the whole figure
PANEL_GAP = 0.15  # inches between panels, and between the panels and the legend or the figure's title


def panel_grid(n_rows: int, n_cols: int) -> tuple[plt.Figure, np.ndarray]:
    """A figure of n_rows x n_cols panels (`axes`, shape (n_rows, n_cols)) sharing both axes,
    tick labels on the outer panels only; finish_grid sizes and spaces them once they have
    their titles."""
    fig, axes = plt.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False, layout="none")
    for ax in axes.flat:
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def finish_grid(fig: plt.Figure, axes: np.ndarray, panel: tuple[float, float], legend: Legend, title: str) -> None:
    """Make the panels of `fig` (panel_grid) `panel` (width, height) inches, spaced for the
    titles they have, then put `legend` at their right (past any row names in the margin) and
    `title` above both, from those texts' own extents. No layout engine: constrained layout's
    two passes over every panel's ticks cost as much as drawing the figure. The panels fill
    the canvas; tick labels, axis labels, legend and title lie outside it, and the box that
    freeze_layout measures keeps them in the file."""
    renderer = fig.canvas.get_renderer()
    inches = fig.dpi_scale_trans.inverted()
    above = [max((ax.title.get_window_extent(renderer).height / fig.dpi for ax in row if ax.get_title()), default=0.0)
             for row in axes]  # fmt: skip
    title_pad = plt.rcParams["axes.titlepad"] / 72
    (n_rows, n_cols), (width, height) = axes.shape, panel
    row_gap = PANEL_GAP + (max(above[1:]) + title_pad if max(above[1:], default=0.0) else 0.0)
    size = (n_cols * width + (n_cols - 1) * PANEL_GAP, n_rows * height + (n_rows - 1) * row_gap)
    fig.set_size_inches(size)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1, wspace=PANEL_GAP / width, hspace=row_gap / height)
    # past the row names in the right margin and the last column's titles (a long one is wider than its panel)
    right = max([size[0], *(text.get_window_extent(renderer).transformed(inches).x1 for ax in axes[:, -1]
                            for text in [*ax.texts, ax.title] if text.get_text())])  # fmt: skip
    handles, labels = [], []
    for heading, entries in legend.items():
        handles += [Line2D([], [], visible=False), *(Line2D([], [], **props) for _, props in entries)]
        labels += [heading, *(label for label, _ in entries)]  # the heading's row: text without a sample
    box = fig.legend(handles, labels, loc="center left", bbox_to_anchor=((right + PANEL_GAP) / size[0], 0.5),
                     frameon=False).get_window_extent(renderer).transformed(inches)  # fmt: skip
    fig.suptitle(title, x=box.x1 / 2 / size[0], y=1 + (above[0] + title_pad + PANEL_GAP) / size[1], va="bottom")


def label_grid(axes: np.ndarray, xlabel: str, ylabel: str) -> None:
    """Axis labels on the outer panels only: x below the bottom row, y left of the first column."""
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)


def title_grid(axes: np.ndarray, row_order: list[str], col_order: list[str]) -> None:
    """Name each panel's row and column: short row names (the learning rate) in the right
    margin and column names above the top row; rotated, a longer row name (other settings
    vary too) would squeeze the panels, so then each panel's title names both."""
    if max(map(len, row_order)) > MARGIN_TITLE_CHARS:
        for (i, row), (j, col) in itertools.product(enumerate(row_order), enumerate(col_order)):
            axes[i, j].set_title(f"{row}\n{col}", fontsize="medium")
        return
    for ax, col in zip(axes[0], col_order):
        ax.set_title(col, fontsize="medium")
    for ax, row in zip(axes[:, -1], row_order):
        ax.annotate(row, xy=(1.02, 0.5), xycoords="axes fraction", rotation=270, ha="left", va="center")


def plot_lines(study: StudyResults, long: pd.DataFrame, y: str, ylabel: str, title: str, style: str | None = None,
               band: bool = False) -> plt.Figure:  # fmt: skip
    """Accuracy (in %) against epoch: a panel per (learning rate [+ other settings], batch
    size), colour = variant, line style = the value of column `style` (if given); each line
    the mean over seeds, with `band` a band from the lowest to the highest seed. `long`: one
    row per (run, epoch[, style]); `title`: the first line of the title, followed by what the
    data and lines are. One aggregation for all curves, one Line2D (and band) per curve."""
    frame, row_order, col_order = with_facets(long.assign(variant=long["variant"].astype(str)))
    frame = frame.assign(line_style=frame[style] if style else "")
    stats = frame.groupby(["facet_row", "facet_col", "variant", "line_style", "epoch"])[y].agg(["mean", "min", "max"])
    curves = {key: curve.droplevel([0, 1, 2, 3]) for key, curve in stats.groupby(level=[0, 1, 2, 3])}
    variants, styles = variants_in(frame), dict(zip(dict.fromkeys(frame["line_style"]), LINE_STYLES))
    legend = {"variant": [(v, {"color": PALETTE[v], **MEAN_MARKERS}) for v in variants]}
    if style:
        legend[style] = [(s, {"color": STYLE_COLOUR, "linestyle": ls, **MEAN_MARKERS}) for s, ls in styles.items()]
    fig, axes = panel_grid(len(row_order), len(col_order))
    for (i, row), (j, col) in itertools.product(enumerate(row_order), enumerate(col_order)):
        for variant, (level, dashes) in itertools.product(variants, styles.items()):
            if (curve := curves.get((row, col, variant, level))) is not None:
                colour = PALETTE[variant]
                axes[i, j].plot(curve.index, curve["mean"], color=colour, linestyle=dashes, **MEAN_MARKERS)
                if band:
                    axes[i, j].fill_between(curve.index, curve["min"], curve["max"], color=colour, alpha=0.2)
    title_grid(axes, row_order, col_order)
    label_grid(axes, "epoch", ylabel)
    epochs = sorted(frame["epoch"].unique())  # whole epochs; one epoch gets one tick (a tiny range gets fractions)
    axes[0, 0].xaxis.set_major_locator(MaxNLocator(integer=True) if len(epochs) > 1 else FixedLocator(epochs))
    lines = f"line: mean over {seeds_note(frame)}" + ("; band: lowest to highest seed" if band else "")
    diverged = int((study.runs["status"] == RunStatus.DIVERGED).sum())
    if diverged:  # else a line that stops early looks like a plotting fault
        lines += (f"; {plural(diverged, 'diverged run')} "
                  f"{'ends at its' if diverged == 1 else 'end at their'} last finite epoch")  # fmt: skip
    panel = LONE_PANEL if axes.size == 1 else PANEL
    finish_grid(fig, axes, panel, legend, f"{title}\n{data_note(study)}\n{lines}")
    return fig


def seeds_note(frame: pd.DataFrame) -> str:
    """ "2 seeds" or "1-3 seeds": how many seeds the curves average over."""
    n = frame.groupby(CELL_KEYS, dropna=False, observed=True)["seed"].nunique()
    return f"{n.min()} seed{'s' if n.max() > 1 else ''}" if n.min() == n.max() else f"{n.min()}-{n.max()} seeds"


def plot_accuracy_curves(study: StudyResults, epochs: pd.DataFrame) -> plt.Figure:
    """Figure 1: test accuracy per epoch, band = min-max over seeds. `epochs`: counted rows."""
    frame = epochs.assign(test_acc=100 * epochs["test_acc"])
    return plot_lines(study, frame, "test_acc", "test accuracy (%)", "Test accuracy per epoch", band=True)


def plot_eval_modes(study: StudyResults, epochs: pd.DataFrame) -> plt.Figure | None:
    """Figure 4: the BN variants' test accuracy with running statistics, PreciseBN and
    test-batch statistics (line style), mean over seeds; None without BN runs."""
    bn = epochs[epochs["variant"].isin(BN_VARIANTS)]
    if bn.empty:
        return None
    long = bn.melt(id_vars=[*CONFIG_KEYS, "epoch"], value_vars=list(EVAL_MODES), var_name="BN statistics",
                   value_name="accuracy").dropna(subset=["accuracy"])  # fmt: skip
    long = long.assign(**{"accuracy": 100 * long["accuracy"], "BN statistics": long["BN statistics"].map(EVAL_MODES)})
    title = "Test accuracy of the BN variants by the BN statistics used to measure it"
    return plot_lines(study, long, "accuracy", "test accuracy (%)", title, style="BN statistics")


def plot_train_vs_test(study: StudyResults, epochs: pd.DataFrame) -> plt.Figure:
    """Figure 5: train accuracy (train mode, over the epoch) and test accuracy (eval mode)
    per epoch, mean over seeds: the gap between them is the generalization gap."""
    long = epochs.melt(id_vars=[*CONFIG_KEYS, "epoch"], value_vars=["train_acc", "test_acc"], var_name="data",
                       value_name="accuracy")  # fmt: skip
    names = {"train_acc": "train (train mode, during the epoch)", "test_acc": "test (eval mode)"}
    long = long.assign(accuracy=100 * long["accuracy"], data=long["data"].map(names))
    title = "Train vs test accuracy: the generalization gap"
    return plot_lines(study, long, "accuracy", "accuracy (%)", title, style="data")


def plot_notebook_window(study: StudyResults, epochs: pd.DataFrame) -> plt.Figure | None:
    """The notebook's window: per notebook log (row) and variant (column), each run's test accuracy in
    its window (notebook.window_curves), eval mode and PreciseBN, one line per seed, with the
    log's own test accuracy as black stars. None without the notebook's cell or when no run
    reaches a log's window."""
    long = window_curves(epochs, study.points) if has_notebook_cell(epochs) else pd.DataFrame()
    if long.empty:
        return None
    names, variants = list(dict.fromkeys(long["log"])), variants_in(long)
    styles = dict(zip(list(EVAL_MODES.values())[:2], LINE_STYLES))
    fig, axes = panel_grid(len(names), len(variants))
    curves = long.sort_values("position").groupby(["log", "variant", "run_id", "statistics"], observed=True)
    for (name, variant, _, stat), curve in curves:  # one line per run and statistics
        ax = axes[names.index(name), variants.index(variant)]
        ax.plot(curve["position"], curve["accuracy"], lw=1, color=PALETTE[variant], linestyle=styles[stat])
    logs = {log.name: log for log in LOGS}
    for (i, name), (j, variant) in itertools.product(enumerate(names), enumerate(variants)):
        axes[i, j].set_title(f"log {name}: {variant}", fontsize="medium")
        axes[i, j].plot(range(1, WINDOW + 1), [100 * a for a in logs[name].test_acc], "k*", markersize=8)
    label_grid(axes, "epochs into the window", "test accuracy (%)")
    legend = {"variant": [(v, {"color": PALETTE[v], "lw": 1}) for v in variants],
              "statistics": [(s, {"color": STYLE_COLOUR, "lw": 1, "linestyle": ls}) for s, ls in styles.items()]}
    title = (f"Test accuracy in the notebook's window, aligned by train accuracy\n{data_note(study)}\n"
             "one line per seed; black stars: the notebook's log")
    finish_grid(fig, axes, PANEL, legend, title)
    return fig


def metric_axis(metric: str) -> str:
    """An axis title from the metric's declaration: "worst drop of test accuracy ... (pp)"."""
    m = METRICS[metric]
    return f"{m.label}: {m.measures} ({m.unit})"


def plot_heatmaps(study: StudyResults, cells: pd.DataFrame, metric: str) -> plt.Figure | None:
    """Figure 2: a learning rate x batch size heat map of the cells' mean `metric` (in pp)
    per variant (and per combination of other varying settings), annotated, one shared
    colour scale; cells without a value (no finished run, or one epoch only) stay grey.
    None when no cell has a value (see UNDRAWN)."""
    values = 100 * cells[f"{metric}_mean"]
    if values.isna().all():
        return None
    extra, variants = extra_axes(cells), variants_in(cells)
    blocks = list(cells.groupby(extra, dropna=False, observed=True)) if extra else [((), cells)]
    lrs, batches = sorted(cells["lr"].unique(), reverse=True), sorted(cells["batch_size"].unique())
    vmax = values.max() if values.max() > 0 else 1.0
    labels = [", ".join(setting_text(k, v) for k, v in zip(extra, key)) for key, _ in blocks]
    titles = [[variant + (f" ({label})" if label else "") for variant in variants] for label in labels]
    # inches: about square cells, and panels wide enough for their tick labels and bold titles (~0.11 a character)
    panel = max(2.2, 1.2 * len(batches), 0.6 + 0.11 * max(len(title) for row in titles for title in row))
    size = (1.5 + panel * len(variants), 1.7 + 0.7 * len(lrs) * len(blocks))
    fig, axes = plt.subplots(len(blocks), len(variants), squeeze=False, layout="constrained", figsize=size)
    for (_, block), row_titles, row in zip(blocks, titles, axes):
        for variant, title, ax in zip(variants, row_titles, row):
            cell = block[block["variant"] == variant]
            table = 100 * cell.set_index(["lr", "batch_size"])[f"{metric}_mean"].unstack()
            table = table.reindex(index=lrs, columns=batches)  # every panel shows the whole grid
            heat_panel(ax, table, vmax)
            ax.set_title(title, color=PALETTE[variant], fontweight="bold")
    fig.supxlabel("batch size (images)")
    fig.supylabel("learning rate")
    fig.colorbar(axes[0, 0].collections[0], ax=axes, label="pp", shrink=0.9)
    missing = " (grey: not measured)" if values.isna().any() else ""
    fig.suptitle(f"{metric_axis(metric).capitalize()}, mean over seeds{missing}\n{data_note(study)}")
    return fig


HEAT_COLOURS = "rocket_r"  # seaborn's colour map (importing seaborn registers it with matplotlib)
DARK_CELL = 0.408  # a cell's relative luminance below which its value is printed in white (seaborn's threshold)


def heat_panel(ax: plt.Axes, table: pd.DataFrame, vmax: float) -> None:
    """Draw `table` (rows top to bottom, index and columns as tick labels) into `ax` as a
    heat map on the colour scale 0..vmax: one QuadMesh with white cell borders, each value
    printed (one decimal) in black or white, whichever reads on its cell; a NaN cell is
    left out, and the axes' grey face shows through it."""
    values = np.ma.masked_invalid(table.to_numpy(dtype=float))
    mesh = ax.pcolormesh(values, cmap=HEAT_COLOURS, vmin=0, vmax=vmax, edgecolors="white", linewidth=1)
    rows, cols = values.shape
    ax.set(xlim=(0, cols), ylim=(rows, 0), facecolor="0.85")  # ylim reversed: the first row on top
    ax.set_xticks(np.arange(cols) + 0.5, [f"{c}" for c in table.columns])
    ax.set_yticks(np.arange(rows) + 0.5, [f"{r:g}" for r in table.index])
    ax.grid(False)  # the style's grid lines would cross the grey cells
    ax.spines[:].set_visible(False)
    luminance = np.reshape(relative_luminance(mesh.cmap(mesh.norm(values.filled(0))).reshape(-1, 4)), (rows, cols))
    for (i, j), value in np.ndenumerate(values.filled(np.nan)):
        if not np.isnan(value):
            ax.text(j + 0.5, i + 0.5, f"{value:.1f}", ha="center", va="center",
                    color="0.15" if luminance[i, j] > DARK_CELL else "white")  # fmt: skip


def plot_accuracy_vs_volatility(study: StudyResults, summary: pd.DataFrame, cells: pd.DataFrame) -> plt.Figure | None:
    """Figure 3: one point per cell with a mean |change|, final accuracy against mean
    |change|, both means over seeds, with bars from the lowest to the highest seed (a std
    bar would reach below 0 for a metric that cannot); colour = variant, marker = learning
    rate, size = batch size. None when no cell has a mean |change| (see UNDRAWN)."""
    metrics = ["mean_abs_change", "final_acc"]
    # A stuck run's flat curve is no evidence of steadiness: its |change| stays out of the bars, as out of the means.
    summary = summary.assign(mean_abs_change=summary["mean_abs_change"].mask(summary["stuck"]))
    spread = summary.groupby(CELL_KEYS, dropna=False, observed=True)[metrics].agg(["min", "max"])
    spread.columns = [f"{m}_{stat}" for m, stat in spread.columns]
    measured = cells.join(spread, on=CELL_KEYS, how="inner").astype({"variant": str})
    frame = measured[measured["mean_abs_change_mean"].notna()]  # a single finite epoch has no change
    if frame.empty:
        return None
    frame = frame.assign(x=100 * frame["mean_abs_change_mean"], y=100 * frame["final_acc_mean"],
                         **{"learning rate": frame["lr"].map("{:g}".format),
                            "batch size": frame["batch_size"].astype(str)})  # fmt: skip
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    for variant, points in frame.groupby("variant"):
        # Clipped at 0: the mean of equal seeds can exceed their max by a rounding error
        # (three runs stuck at 10% average to 10.000000000000002%), which errorbar refuses.
        bars = {axis: np.maximum(0, [points[axis] - 100 * points[f"{m}_min"], 100 * points[f"{m}_max"] - points[axis]])
                for axis, m in zip("xy", metrics)}  # fmt: skip
        ax.errorbar(points["x"], points["y"], xerr=bars["x"], yerr=bars["y"], fmt="none", ecolor=PALETTE[variant],
                    alpha=0.4, lw=1)  # fmt: skip
    batches = sorted(frame["batch size"].unique(), key=int)
    sns.scatterplot(data=frame, x="x", y="y", hue="variant", hue_order=variants_in(frame), palette=PALETTE,
                    style="learning rate", style_order=sorted(frame["learning rate"].unique(), key=float),
                    size="batch size", size_order=batches, sizes=dict(zip(batches, np.linspace(40, 160, len(batches)))),
                    ax=ax, zorder=3)  # fmt: skip
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    ax.set_xlabel(metric_axis("mean_abs_change") + ", mean over seeds")
    ax.set_ylabel(f"{METRICS['final_acc'].header}, mean over seeds")
    unplotted = len(measured) - len(frame)
    left_out = (f"; {plural(unplotted, 'cell')} with a single finite epoch or only stuck runs left out"
                if unplotted else "")  # fmt: skip
    ax.set_title(f"Final accuracy vs volatility, one point per grid cell{left_out}; bars: lowest to highest seed\n"
                 f"{data_note(study)}")  # fmt: skip
    return fig


VERDICT_COLOURS = {Verdict.HIGHER: "tab:red", Verdict.LOWER: "tab:blue"}  # any other verdict: grey, no claim
NO_CLAIM_COLOUR = "0.6"


def plot_forest(claims: pd.DataFrame, panel, row, title: str) -> plt.Figure:
    """A forest plot of claims.csv rows: one panel per `panel(claim)` (each on its own scale:
    final accuracy differs by tens of pp, the volatility by a few), one row per `row(claim)`,
    in the rows' order; the mean paired difference (pp) with its interval, a line at 0,
    colour by verdict; `title` above, then how many pairs."""
    panels = list(dict.fromkeys(map(panel, claims.itertuples())))
    rows = list(dict.fromkeys(map(row, claims.itertuples())))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 2.6 * len(panels), 1.4 + 0.45 * len(rows)),
                             sharey=True, squeeze=False, layout="constrained")  # fmt: skip
    for claim in claims.itertuples():
        ax, y = axes[0, panels.index(panel(claim))], rows.index(row(claim))
        colour = VERDICT_COLOURS.get(Verdict(claim.verdict), NO_CLAIM_COLOUR)
        ax.plot([100 * claim.low, 100 * claim.high], [y, y], color=colour, lw=2)
        ax.plot(100 * claim.mean, y, "o", color=colour)
    for name, ax in zip(panels, axes[0]):
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("pp")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # narrow panels: few ticks, none overlapping
    axes[0, 0].set_yticks(range(len(rows)), rows)
    axes[0, 0].set_ylim(len(rows) - 0.5, -0.5)  # the table's order, top to bottom
    legend = [("first clearly higher", VERDICT_COLOURS[Verdict.HIGHER]),
              ("first clearly lower", VERDICT_COLOURS[Verdict.LOWER]), ("no claim", NO_CLAIM_COLOUR)]  # fmt: skip
    fig.legend(handles=[Line2D([], [], color=c, lw=2, marker="o", label=text) for text, c in legend],
               loc="outside lower center", ncols=3, frameon=False)  # fmt: skip
    n = claims["n_pairs"]
    count = f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"
    fig.suptitle(title.format(pairs=count))
    return fig


def plot_comparisons(study: StudyResults, comparisons: pd.DataFrame) -> plt.Figure | None:
    """Figure 7: comparisons.csv as a forest plot, a panel per metric, a row per pair of
    variants. None without a pair of runs (see UNDRAWN)."""
    if comparisons.empty:
        return None
    return plot_forest(comparisons, lambda c: METRICS[c.metric].label, lambda c: f"{c.a} − {c.b}",
                       "Paired differences between variants, first minus second ({pairs} pairs of runs: same cell "
                       f"and seed), mean and 95% interval\n{data_note(study)}")  # fmt: skip


def plot_remedies(study: StudyResults, claims: pd.DataFrame) -> plt.Figure | None:
    """The remedies' claims (bnstudy.report.remedies) as a forest plot: a row per remedy, a
    panel per metric against the baseline, and one for the worst drop against the baseline's
    PreciseBN one. None unless it is a remedies study (see UNDRAWN)."""
    rows = claims[claims["family"] == REMEDY]
    if rows.empty:
        return None
    return plot_forest(rows, lambda c: METRICS[c.metric].label + (", against PreciseBN" if c.b.endswith("PreciseBN")
                                                                  else ""), lambda c: c.a,
                       f"Each remedy minus {BASELINE_NAME}, paired by seed ({{pairs}} pairs), mean and 95% "
                       f"interval\n{data_note(study)}")  # fmt: skip


# How each figure of FIGURES is drawn from an Analysis: a figure, or None when it has nothing to show.
DRAWERS = {
    "accuracy_curves": lambda a: plot_accuracy_curves(a.study, a.epochs),
    "stability_mean_abs_change": lambda a: plot_heatmaps(a.study, a.cells, "mean_abs_change"),
    "stability_worst_drop": lambda a: plot_heatmaps(a.study, a.cells, "worst_drop"),
    "accuracy_vs_volatility": lambda a: plot_accuracy_vs_volatility(a.study, a.summary, a.cells),
    "eval_modes": lambda a: plot_eval_modes(a.study, a.epochs),
    "train_vs_test": lambda a: plot_train_vs_test(a.study, a.epochs),
    "comparisons": lambda a: plot_comparisons(a.study, a.comparisons),
    "remedies": lambda a: plot_remedies(a.study, a.claims),
    "notebook_window": lambda a: plot_notebook_window(a.study, a.epochs),
}


def draw_figure(a: Analysis, name: str) -> plt.Figure | None:
    """Figure `name` of FIGURES for the analysis `a`, in the report's style; None when it has
    nothing to show (UNDRAWN says why) and for every figure when no run has a counted epoch
    (every run diverged in its first epoch)."""
    if a.epochs.empty:
        return None
    with plt.rc_context(sns.axes_style("whitegrid")):
        return DRAWERS[name](a)


def write_figures(a: Analysis, directory: Path, jobs: int = 1) -> list[str]:
    """Draw each figure of `a` and write the drawn ones as directory/<name>.png (save_figure),
    over `jobs` processes (bnstudy.report.forked: each figure whole in one of them, which
    inherits `a`); the names drawn, in FIGURES order. Side effects: creates `directory` when a
    figure is drawn; every figure is closed again."""
    drawn = map_forked(lambda name: _write_figure(a, name, directory), FIGURES, jobs)
    return [name for name, was_drawn in zip(FIGURES, drawn) if was_drawn]


def _write_figure(a: Analysis, name: str, directory: Path) -> bool:
    """Draw figure `name` of `a` and save it in `directory`; whether it had something to show."""
    fig = draw_figure(a, name)
    if fig is not None:
        save_figure(fig, directory / f"{name}.png")
    return fig is not None


def freeze_layout(fig: plt.Figure) -> Bbox:
    """Place fig's panels, titles and legends once and keep them there (a grid of panels is
    placed already, by finish_grid; the others by constrained layout, run here); the box
    (inches) of all it draws, with savefig's padding: what savefig's bbox_inches="tight" would
    crop to, what lies outside the canvas included. With a layout engine set (even
    matplotlib's placeholder for "none") or "tight", savefig would draw the figure once more,
    to lay it out, before drawing the file."""
    if (engine := fig.get_layout_engine()) is not None:
        engine.execute(fig)
        with plt.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
            fig.set_layout_engine(None)  # no engine at all (these settings would pick one)
    return fig.get_tightbbox(fig.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Write `fig` as the PNG `path` at 150 dpi, laid out and measured once (freeze_layout)
    and drawn once, creating its folder. PNG only: report.md shows the PNGs, and an SVG beside
    each cost a second draw of every figure (about 15% of the report's time) for a file
    nothing read. Closes `fig`, also when the save fails."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches=freeze_layout(fig))
    finally:
        plt.close(fig)
