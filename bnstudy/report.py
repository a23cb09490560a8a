"""Study report: a study's runs -> stability metrics, summary tables, figures and report.md.

    DIR/runs/<run_id>.csv + .json   input (bnstudy.store's layout); only runs whose JSON says
                                    complete or diverged count, the rest are skipped and counted
    DIR/summary.csv                 one row per run: its settings and stability metrics
    DIR/cells.csv                   one row per grid cell (all settings but the seed)
    DIR/figures/<name>.png + .svg   the figures of FIGURES
    DIR/report.md                   what was run, findings, ranked tables, the figures

Conventions that make DESIGN.md's metrics precise:

- An epoch *counts* when its train_loss, test_loss and test_acc are all finite. A diverged
  run keeps the epochs before its loss turned non-finite (the last row's accuracy comes from
  NaN weights and means nothing); its metrics are computed over the epochs that count,
  summary.csv flags it (`diverged`, `epochs_used`) and cells.csv counts it (`n_diverged`).
- late_std: *population* standard deviation (ddof=0) of the last ceil(E/2) counted epochs:
  it describes those epochs themselves, not a sample of something larger, and is 0 rather
  than undefined for a single epoch.
- Spread over seeds (`<metric>_std`, `seed_std`): *sample* standard deviation (ddof=1),
  NaN for a cell with one seed.
- Accuracies are fractions in the CSVs; figures and report.md show percent (%) and
  percentage points (pp).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window: the report runs headless

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bnstudy import spec  # noqa: E402
from bnstudy.data import TEST_SIZE, TRAIN_SIZE  # noqa: E402
from bnstudy.errors import UserError  # noqa: E402
from bnstudy.models import VARIANTS  # noqa: E402
from bnstudy.store import DONE_STATUSES, RunStore, atomic_write_text, check_writable  # noqa: E402
from bnstudy.train import CSV_COLUMNS, METRIC_COLUMNS  # noqa: E402

CONFIG_KEYS = list(spec.RUN_SETTINGS)  # a run's identity; `study` only names its folder
CELL_KEYS = [k for k in CONFIG_KEYS if k != "seed"]
# The axes every figure lays out explicitly; any other setting that varies joins the facet label.
PLOT_AXES = ("variant", "lr", "batch_size")
BN_VARIANTS = [v for v in VARIANTS if v != "none"]

# One colour per variant in every figure (Okabe-Ito: colour-blind safe).
PALETTE = {"none": "#7f7f7f", "bn_before": "#d55e00", "bn_after": "#0072b2"}

CURVE_METRICS = ["final_acc", "best_acc", "mean_abs_change", "worst_drop", "late_std"]
RUN_METRICS = CURVE_METRICS + ["gen_gap", "ema_gap"]
# Volatility of the BN diagnostic curves, to tell how much instability the running statistics cause.
EVAL_MODES = {
    "test_acc": "running statistics (eval mode)",
    "test_acc_precise_bn": "PreciseBN statistics",
    "test_acc_batch_stats": "test-batch statistics",
}
DIAGNOSTIC_METRICS = [f"{m}_{col.removeprefix('test_acc_')}" for col in list(EVAL_MODES)[1:]
                      for m in ("mean_abs_change", "worst_drop")]  # fmt: skip
ALL_METRICS = RUN_METRICS + DIAGNOSTIC_METRICS

# The reference notebook's published log (d2l, batch-norm chapter: bn_before, Adam, lr 1e-3,
# batch 256, 5 epochs): test accuracy per epoch and the last epoch's train accuracy.
NOTEBOOK_TEST_ACC = (0.838, 0.821, 0.704, 0.842, 0.686)
NOTEBOOK_FINAL_TRAIN_ACC = 0.919
NOTEBOOK_CELL = {"variant": "bn_before", "optimizer": "adam", "lr": 1e-3, "batch_size": 256}

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
}  # fmt: skip


# ---------------------------------------------------------------- metrics of one curve
def drops(acc: np.ndarray) -> np.ndarray:
    """(E-1,) for acc of shape (E,): how far a(e) lies below the best of a(1..e-1), for e >= 2
    (negative where a(e) is a new best)."""
    return np.maximum.accumulate(acc)[:-1] - acc[1:]


def curve_metrics(acc: np.ndarray) -> dict:
    """DESIGN.md's metrics of one accuracy curve acc (E,) of finite fractions, epochs 1..E.

    mean_abs_change is NaN for a single epoch (no change to measure), worst_drop is 0 for it;
    every metric is NaN for an empty curve.
    """
    acc = np.asarray(acc, dtype=float)
    if acc.size == 0:
        return dict.fromkeys(CURVE_METRICS, math.nan)
    late = acc[acc.size // 2 :]  # the last ceil(E/2) epochs
    return {
        "final_acc": acc[-1],
        "best_acc": acc.max(),
        "mean_abs_change": np.abs(np.diff(acc)).mean() if acc.size > 1 else math.nan,
        "worst_drop": max(0.0, drops(acc).max()) if acc.size > 1 else 0.0,
        "late_std": late.std(ddof=0),
    }


def counts(epochs: pd.DataFrame) -> np.ndarray:
    """(rows,) bool: which epoch rows count (train_loss, test_loss and test_acc finite)."""
    return np.isfinite(epochs[["train_loss", "test_loss", "test_acc"]].to_numpy(dtype=float)).all(axis=1)


def run_metrics(run: pd.DataFrame) -> dict:
    """All per-run metrics (ALL_METRICS keys) from one run's epoch rows (CSV columns)."""
    used = run[counts(run)].sort_values("epoch")
    metrics = curve_metrics(used["test_acc"].to_numpy())
    last = used.tail(1)
    metrics["gen_gap"] = float((last["train_acc"] - last["test_acc"]).sum()) if len(last) else math.nan
    ema = (used["test_acc_precise_bn"] - used["test_acc"]).dropna()
    metrics["ema_gap"] = ema.mean() if len(ema) else math.nan  # NaN for `none`: it has no BN
    for col in list(EVAL_MODES)[1:]:
        diagnostic = curve_metrics(used[col].dropna().to_numpy())
        for name in ("mean_abs_change", "worst_drop"):
            metrics[f"{name}_{col.removeprefix('test_acc_')}"] = diagnostic[name]
    metrics["epochs_used"] = len(used)
    return metrics


# ---------------------------------------------------------------- loading a study
RUN_INFO = ["study", "device", "started", "ended", "torch_version", "bnstudy_version", "git_commit"]  # from the JSON


@dataclasses.dataclass
class StudyResults:
    """A study's results, read from disk.

    epochs:   one row per epoch of every done run: CSV_COLUMNS, then the JSON's config
              (CONFIG_KEYS), status and device; typed (variant an ordered category).
    runs:     one row per done run: run_id, CONFIG_KEYS, status, RUN_INFO.
    skipped:  one row per run file set that does not count: run_id, reason.
    expected: one row per run the grid should hold: run_id, CONFIG_KEYS.
    grid_source: where `expected` comes from, in words.
    """

    root: Path
    epochs: pd.DataFrame
    runs: pd.DataFrame
    skipped: pd.DataFrame
    expected: pd.DataFrame
    grid_source: str

    @property
    def name(self) -> str:
        return str(self.runs["study"].iloc[0])


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the setting columns it has cast to their types: variant ordered as
    VARIANTS, the limits (None: all images) as nullable Int64."""
    types = {"variant": pd.CategoricalDtype(VARIANTS, ordered=True), "bn_impl": str, "optimizer": str,
             "lr": float, "batch_size": int, "epochs": int, "seed": int, "limit_train": "Int64",
             "limit_test": "Int64", "precise_bn_samples": int, "epoch": int}  # fmt: skip
    return frame.astype({k: v for k, v in types.items() if k in frame.columns})


def read_json(path: Path) -> dict | None:
    """A run's metadata, or None when it is unreadable or lacks its status or a setting."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(meta, dict) and isinstance(meta.get("config"), dict) and "status" in meta
    return meta if ok and set(CONFIG_KEYS) <= set(meta["config"]) else None


def read_csv(path: Path) -> pd.DataFrame | None:
    """A run's epoch rows, or None when the file is missing, unreadable or not a run CSV."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    return frame if list(frame.columns) == CSV_COLUMNS and len(frame) else None


def load_run(store: RunStore, run_id: str) -> tuple[pd.DataFrame | None, dict]:
    """(the run's epoch rows with the JSON's settings and status as columns, or None when
    the run does not count; its record: run_id, `reason` it does not count or None, and,
    where its JSON is readable, `config` and the JSON's study/status/device/times)."""
    meta = read_json(store.json_path(run_id))
    if meta is None:
        reason = "unreadable or incomplete JSON" if store.json_path(run_id).exists() else "no JSON (in flight or killed)"
        return None, {"run_id": run_id, "reason": reason}
    config = {k: meta["config"][k] for k in CONFIG_KEYS}
    record = {"run_id": run_id, "reason": None, "config": config, "status": meta["status"],
              **{k: meta.get(k) for k in RUN_INFO}}  # fmt: skip
    if meta["status"] not in DONE_STATUSES:
        return None, {**record, "reason": str(meta["status"])}
    rows = read_csv(store.csv_path(run_id))
    if rows is None:
        return None, {**record, "reason": "missing or unreadable CSV"}
    # The JSON's settings are the whole config (the CSV repeats only some of them).
    rows = rows.drop(columns=[k for k in CONFIG_KEYS if k in rows.columns])
    return rows.assign(**config, status=meta["status"], device=meta.get("device")), record


def grid_from_observed(configs: list[dict]) -> list[spec.RunConfig]:
    """The grid inferred as the product of every setting's observed values (`configs`: the
    settings of each run seen, done or not). Combinations RunConfig rejects (e.g. a batch
    larger than a training limit) belong to no grid and are left out."""
    axes = [sorted({c[k] for c in configs}, key=lambda v: (v is not None, v)) for k in CONFIG_KEYS]
    grid = []
    for values in itertools.product(*axes):
        try:
            grid.append(spec.RunConfig(**dict(zip(CONFIG_KEYS, values))))
        except spec.SettingError:
            continue
    return grid


def expected_grid(store: RunStore, configs: list[dict]) -> tuple[list[spec.RunConfig], str]:
    """(the runs the study should hold, where that list comes from in words): the sweep's
    copy of its spec when there is a readable one, else the grid inferred from `configs`."""
    problem = ""
    if store.spec_path.is_file():
        try:
            return spec.load_study(store.spec_path).runs(), f"from {store.spec_path.name}"
        except UserError as exc:  # an old or damaged copy must not stop the report
            problem = f"; {store.spec_path.name} is unusable: {exc}"
    return grid_from_observed(configs), f"inferred as the product of every setting's observed values{problem}"


def config_frame(configs: list[spec.RunConfig]) -> pd.DataFrame:
    """One typed row per config: run_id, CONFIG_KEYS."""
    return typed(pd.DataFrame([{"run_id": c.run_id, **c.identity()} for c in configs], columns=["run_id", *CONFIG_KEYS]))


def load_results(root: str | os.PathLike) -> StudyResults:
    """Read every run of the study in `root`; UserError when there is none to report."""
    root = Path(root)
    store = RunStore(root)
    if not root.is_dir():
        problem = "not a folder" if root.exists() else "no such folder"
        raise UserError(f"{root}: {problem}; give a study's results folder, e.g. results/default (`make sweep` makes one)")
    run_ids = sorted({p.stem for p in store.runs_dir.glob("*.csv")} | {p.stem for p in store.runs_dir.glob("*.json")})
    if not run_ids:
        raise UserError(f"{root}: no run files in {store.runs_dir} (is this a study folder?)")
    loaded = [load_run(store, run_id) for run_id in run_ids]
    records = pd.DataFrame([record for _, record in loaded])
    skipped = records.loc[records["reason"].notna(), ["run_id", "reason"]].reset_index(drop=True)
    frames = [rows for rows, _ in loaded if rows is not None]
    if not frames:
        reasons = ", ".join(f"{n} {reason}" for reason, n in skipped["reason"].value_counts().items())
        raise UserError(f"{root}: no complete or diverged run to report ({reasons})")
    done = records[records["reason"].isna()]
    runs = typed(pd.concat([done[["run_id"]].reset_index(drop=True), pd.DataFrame(done["config"].tolist()),
                            done[["status", *RUN_INFO]].reset_index(drop=True)], axis=1))  # fmt: skip
    grid, grid_source = expected_grid(store, records["config"].dropna().tolist())
    epochs = pd.concat(frames, ignore_index=True)[["run_id", "study", *CONFIG_KEYS, "status", "device", *METRIC_COLUMNS]]
    return StudyResults(root, typed(epochs), runs, skipped, config_frame(grid), grid_source)


# ---------------------------------------------------------------- tables
def summarize_runs(study: StudyResults) -> pd.DataFrame:
    """summary.csv: one row per done run, in grid order: run_id, CONFIG_KEYS, status,
    diverged, epochs_used, ALL_METRICS, train_seconds and eval_seconds (sums over epochs)."""
    by_run = study.epochs.groupby("run_id", sort=False)
    metrics = pd.DataFrame({run_id: run_metrics(run) for run_id, run in by_run}).T
    seconds = by_run[["train_seconds", "eval_seconds"]].sum()
    summary = study.runs[["run_id", *CONFIG_KEYS, "status"]].set_index("run_id").join(metrics).join(seconds)
    summary["diverged"] = summary["status"] == "diverged"
    summary = summary.astype({"epochs_used": int, **dict.fromkeys(ALL_METRICS, float)})
    columns = [*CONFIG_KEYS, "status", "diverged", "epochs_used", *ALL_METRICS, "train_seconds", "eval_seconds"]
    return summary[columns].reset_index().sort_values([*CELL_KEYS, "seed"], ignore_index=True)


def aggregate_cells(summary: pd.DataFrame, expected: pd.DataFrame) -> pd.DataFrame:
    """cells.csv: one row per grid cell (CELL_KEYS), expected cells without runs included:
    n (done runs), n_expected, n_diverged, seed_std (sample std of final_acc over seeds),
    then <metric>_mean and <metric>_std (ddof=1) for each of ALL_METRICS."""
    groups = summary.groupby(CELL_KEYS, dropna=False, observed=True)
    stats = groups[ALL_METRICS].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    sizes = groups.agg(n=("run_id", "size"), n_diverged=("diverged", "sum"))
    n_expected = expected.groupby(CELL_KEYS, dropna=False, observed=True).size().rename("n_expected")
    cells = sizes.join(stats).join(n_expected, how="outer")
    cells[["n", "n_diverged"]] = cells[["n", "n_diverged"]].fillna(0).astype(int)
    # A done cell outside the expected grid (its spec changed since) expects just what it has.
    cells["n_expected"] = cells["n_expected"].fillna(cells["n"]).astype(int)
    cells["seed_std"] = cells["final_acc_std"]
    stat_columns = [f"{m}_{s}" for m in ALL_METRICS for s in ("mean", "std")]
    return cells.reset_index()[[*CELL_KEYS, "n", "n_expected", "n_diverged", "seed_std", *stat_columns]]


def missing_runs(study: StudyResults) -> pd.DataFrame:
    """The expected runs that are not done: run_id, CONFIG_KEYS, reason (the skipped
    run's status or problem, or "not run")."""
    missing = study.expected[~study.expected["run_id"].isin(study.runs["run_id"])]
    reasons = study.skipped.set_index("run_id")["reason"]
    return missing.assign(reason=missing["run_id"].map(reasons).fillna("not run")).reset_index(drop=True)


# ---------------------------------------------------------------- figures
SETTING_NAMES = {"lr": "learning rate", "batch_size": "batch size"}  # how sentences and labels name them


def value_text(key: str, value) -> str:
    """A setting's value as text: lr 0.001 -> "0.001", limit_train None -> "all"."""
    if pd.isna(value):
        return "all"
    return f"{value:g}" if key == "lr" else str(value)


def setting_text(key: str, value) -> str:
    """A setting as labels and sentences show it: "learning rate 0.001", "batch size 256",
    "limit_train all"."""
    return f"{SETTING_NAMES.get(key, key)} {value_text(key, value)}"


def extra_axes(frame: pd.DataFrame) -> list[str]:
    """The cell settings other than PLOT_AXES that take more than one value in `frame`."""
    return [k for k in CELL_KEYS if k not in PLOT_AXES and frame[k].nunique(dropna=False) > 1]


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


def plot_lines(study: StudyResults, long: pd.DataFrame, y: str, ylabel: str, title: str, style: str | None = None,
               errorbar=None) -> plt.Figure:  # fmt: skip
    """Accuracy (in %) against epoch: a facet per (learning rate [+ other settings], batch
    size), colour = variant, optional line style; each line the mean over seeds, with
    `errorbar` (seaborn's spec) drawn as a band. `long`: one row per (run, epoch[, style]);
    `title`: the first line of the title, followed by what the data and lines are."""
    frame, row_order, col_order = with_facets(long.assign(variant=long["variant"].astype(str)))
    single = len(row_order) * len(col_order) == 1  # one panel: draw it larger, the legend and title need the room
    grid = sns.relplot(data=frame, kind="line", x="epoch", y=y, hue="variant", hue_order=variants_in(frame),
                       palette=PALETTE, style=style, row="facet_row", col="facet_col", row_order=row_order,
                       col_order=col_order, errorbar=errorbar, marker="o", markersize=4, height=3.6 if single else 2.8, aspect=1.4 if single else 1.3,
                       facet_kws={"margin_titles": True})  # fmt: skip
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    grid.set_axis_labels("epoch", ylabel)
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lines = f"line: mean over {seeds_note(frame)}" + ("; band: lowest to highest seed" if errorbar else "")
    diverged = int((study.runs["status"] == "diverged").sum())
    if diverged:  # else a line that stops early looks like a plotting fault
        lines += f"; {plural(diverged, 'diverged run')} {'ends at its' if diverged == 1 else 'end at their'} last finite epoch"
    grid.figure.suptitle(f"{title}\n{data_note(study)}\n{lines}", y=1.0, va="bottom")
    return grid.figure


def seeds_note(frame: pd.DataFrame) -> str:
    """ "2 seeds" or "1-3 seeds": how many seeds the curves average over."""
    n = frame.groupby(CELL_KEYS, dropna=False, observed=True)["seed"].nunique()
    return f"{n.min()} seed{'s' if n.max() > 1 else ''}" if n.min() == n.max() else f"{n.min()}-{n.max()} seeds"


def plot_accuracy_curves(study: StudyResults, epochs: pd.DataFrame) -> plt.Figure:
    """Figure 1: test accuracy per epoch, band = min-max over seeds. `epochs`: counted rows."""
    frame = epochs.assign(test_acc=100 * epochs["test_acc"])
    return plot_lines(study, frame, "test_acc", "test accuracy (%)", "Test accuracy per epoch", errorbar=("pi", 100))


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


METRIC_LABELS = {
    "mean_abs_change": "mean |change| of test accuracy from one epoch to the next (pp)",
    "worst_drop": "worst drop of test accuracy below an earlier best (pp)",
}


def plot_heatmaps(study: StudyResults, cells: pd.DataFrame, metric: str) -> plt.Figure:
    """Figure 2: a learning rate x batch size heat map of the cells' mean `metric` (in pp)
    per variant (and per combination of other varying settings), annotated, one shared
    colour scale; cells without a value (no finished run, or one epoch only) stay grey."""
    extra, variants = extra_axes(cells), variants_in(cells)
    blocks = list(cells.groupby(extra, dropna=False, observed=True)) if extra else [((), cells)]
    lrs, batches = sorted(cells["lr"].unique(), reverse=True), sorted(cells["batch_size"].unique())
    values = 100 * cells[f"{metric}_mean"]
    vmax = values.max() if values.notna().any() and values.max() > 0 else 1.0
    # inches: about square cells, and panels wide enough for their titles
    size = (1.5 + max(2.2, 1.2 * len(batches)) * len(variants), 1.7 + 0.7 * len(lrs) * len(blocks))
    fig, axes = plt.subplots(len(blocks), len(variants), squeeze=False, layout="constrained", figsize=size)
    for (key, block), row in zip(blocks, axes):
        for variant, ax in zip(variants, row):
            cell = block[block["variant"] == variant]
            table = 100 * cell.set_index(["lr", "batch_size"])[f"{metric}_mean"].unstack()
            table = table.reindex(index=lrs, columns=batches)  # every panel shows the whole grid
            sns.heatmap(table, ax=ax, annot=True, fmt=".1f", vmin=0, vmax=vmax, cmap="rocket_r", cbar=False,
                        linewidths=1, linecolor="white", yticklabels=[f"{lr:g}" for lr in lrs])  # fmt: skip
            ax.set_facecolor("0.85")
            label = ", ".join(setting_text(k, v) for k, v in zip(extra, key))
            ax.set_title(variant + (f" ({label})" if label else ""), color=PALETTE[variant], fontweight="bold")
            ax.set(xlabel="", ylabel="")  # one label per figure (below), not one per panel
            ax.tick_params(axis="y", rotation=0)
    fig.supxlabel("batch size (images)")
    fig.supylabel("learning rate")
    fig.colorbar(axes[0, 0].collections[0], ax=axes, label="pp", shrink=0.9)
    missing = " (grey: not measured)" if values.isna().any() else ""
    fig.suptitle(f"{METRIC_LABELS[metric].capitalize()}, mean over seeds{missing}\n{data_note(study)}")
    return fig


def plot_accuracy_vs_volatility(study: StudyResults, summary: pd.DataFrame, cells: pd.DataFrame) -> plt.Figure:
    """Figure 3: one point per cell with runs, final accuracy against mean |change|, both
    means over seeds, with bars from the lowest to the highest seed (a std bar would reach
    below 0 for a metric that cannot); colour = variant, marker = learning rate, size =
    batch size."""
    metrics = ["mean_abs_change", "final_acc"]
    spread = summary.groupby(CELL_KEYS, dropna=False, observed=True)[metrics].agg(["min", "max"])
    spread.columns = [f"{m}_{stat}" for m, stat in spread.columns]
    frame = cells.join(spread, on=CELL_KEYS, how="inner").astype({"variant": str})
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
    ax.set_xlabel(METRIC_LABELS["mean_abs_change"] + ", mean over seeds")
    ax.set_ylabel("final test accuracy (%), mean over seeds")
    ax.set_title(f"Final accuracy vs volatility, one point per grid cell; bars: lowest to highest seed\n{data_note(study)}")
    return fig


def draw_figures(study: StudyResults, summary: pd.DataFrame, cells: pd.DataFrame) -> dict[str, plt.Figure]:
    """The figures of FIGURES by name (eval_modes only when the study has BN runs)."""
    epochs = study.epochs[counts(study.epochs)]
    if epochs.empty:  # every run diverged in its first epoch: nothing to draw
        return {}
    with plt.rc_context(sns.axes_style("whitegrid")):
        figures = {
            "accuracy_curves": plot_accuracy_curves(study, epochs),
            "stability_mean_abs_change": plot_heatmaps(study, cells, "mean_abs_change"),
            "stability_worst_drop": plot_heatmaps(study, cells, "worst_drop"),
            "accuracy_vs_volatility": plot_accuracy_vs_volatility(study, summary, cells),
            "eval_modes": plot_eval_modes(study, epochs),
            "train_vs_test": plot_train_vs_test(study, epochs),
        }
    return {name: fig for name, fig in figures.items() if fig is not None}


def save_figures(figures: dict[str, plt.Figure], directory: Path) -> list[Path]:
    """Write each figure as directory/<name>.png (150 dpi) and .svg, close it; the PNG paths.
    The SVGs carry no date and fixed ids, so an unchanged study rewrites identical files."""
    if figures:
        directory.mkdir(parents=True, exist_ok=True)
    paths = []
    with plt.rc_context({"svg.hashsalt": "bnstudy"}):
        for name, fig in figures.items():
            fig.savefig(directory / f"{name}.png", dpi=150, bbox_inches="tight")
            fig.savefig(directory / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
            plt.close(fig)
            paths.append(directory / f"{name}.png")
    return paths


# ---------------------------------------------------------------- findings: sentences computed from the data
def pct(x: float) -> str:
    """A fraction as percent: 0.8384 -> "83.8%"."""
    return f"{100 * x:.1f}%"


def pp(x: float) -> str:
    """A difference of fractions in percentage points: 0.107 -> "10.7 pp"."""
    return f"{100 * x:.1f} pp"


def plural(n: int, noun: str) -> str:
    """ "1 run", "2 runs"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def join_words(items: list[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def cell_text(row, extra: list[str]) -> str:
    """A cell (or run) in words: "bn_before at learning rate 0.001, batch size 256" plus the
    other settings that vary in the study (`extra`)."""
    return f"{row['variant']} at " + ", ".join(setting_text(k, row[k]) for k in ["lr", "batch_size", *extra])


def per_variant(values: pd.Series, fmt) -> str:
    """A Series indexed by variant as "7.0 pp for none, 12.0 pp for bn_before and ..."
    ("not measured" when every value is NaN)."""
    items = [f"{fmt(v)} for {variant}" for variant, v in values.dropna().items()]
    return join_words(items) if items else "not measured"


def upward_share(epochs: pd.DataFrame) -> pd.Series:
    """Per variant: the fraction of all epoch-to-epoch |change| of test accuracy that is a
    rise (`epochs`: counted rows). mean_abs_change counts rises and falls alike."""
    ordered = epochs.sort_values(["run_id", "epoch"])
    change = ordered.groupby("run_id")["test_acc"].diff()
    frame = pd.DataFrame({"variant": ordered["variant"], "up": change.clip(lower=0), "abs": change.abs()})
    sums = frame.groupby("variant", observed=True)[["up", "abs"]].sum()
    return (sums["up"] / sums["abs"]).where(sums["abs"] > 0)


def variant_findings(cells: pd.DataFrame, epochs: pd.DataFrame) -> list[str]:
    """How the variants compare, averaged over their cells (`cells`: cells with runs)."""
    means = cells.groupby("variant", observed=True)[["mean_abs_change_mean", "worst_drop_mean", "gen_gap_mean"]].mean()
    up = upward_share(epochs).dropna()
    steadiest = means["worst_drop_mean"].idxmin()
    sentences = [
        f"Averaged over their grid cells, the worst drop of test accuracy below an earlier best is "
        f"{per_variant(means['worst_drop_mean'], pp)}, smallest for {steadiest}.",
        f"The train-minus-test gap at the last epoch (gen_gap) averages {per_variant(means['gen_gap_mean'], pp)}.",
    ]
    if means["mean_abs_change_mean"].notna().any():  # needs two epochs
        sentences.insert(0, f"Averaged over their grid cells, the mean |change| of test accuracy from one epoch to "
                            f"the next is {per_variant(means['mean_abs_change_mean'], pp)}.")  # fmt: skip
    if len(up):
        mostly = ("learning progress rather than instability" if (up > 0.5).all() else
                  "falls, that is instability" if (up < 0.5).all() else
                  "gains for some variants and falls for others")  # fmt: skip
        sentences.append(f"Mean |change| counts gains and falls alike; its upward share is "
                         f"{per_variant(up, '{:.0%}'.format)}, so here it mostly measures {mostly}.")  # fmt: skip
    return sentences


def largest_drop_finding(summary: pd.DataFrame, epochs: pd.DataFrame, extra: list[str]) -> str:
    """The run with the largest worst drop, where its accuracy peaked and where it fell to."""
    worst = summary.loc[summary["worst_drop"].idxmax()]
    if not worst["worst_drop"] > 0:
        return "No run's test accuracy ever fell below an earlier best."
    run = epochs[epochs["run_id"] == worst["run_id"]].sort_values("epoch")
    acc, epoch = run["test_acc"].to_numpy(), run["epoch"].to_numpy()
    fall = int(np.argmax(drops(acc))) + 1
    peak = int(np.argmax(acc[:fall]))
    return (f"The largest worst drop of any run is {pp(worst['worst_drop'])}: {cell_text(worst, extra)}, seed "
            f"{worst['seed']}, fell from {pct(acc[peak])} at epoch {epoch[peak]} to {pct(acc[fall])} at epoch "
            f"{epoch[fall]}.")  # fmt: skip


def cell_findings(cells: pd.DataFrame, extra: list[str]) -> list[str]:
    """The extreme cells: largest mean worst drop and mean |change|, best and worst final
    accuracy, largest spread over seeds (`cells`: cells with runs)."""
    drop, best, worst = (cells.loc[i] for i in (cells["worst_drop_mean"].idxmax(), cells["final_acc_mean"].idxmax(),
                                                 cells["final_acc_mean"].idxmin()))  # fmt: skip
    never = int((cells["worst_drop_mean"] == 0).sum())
    sentences = [
        f"By cell (mean over seeds), the largest worst drop is {pp(drop['worst_drop_mean'])} ({cell_text(drop, extra)}); "
        f"cells whose accuracy never drops in any seed: {never} of {len(cells)}.",
        f"The best final test accuracy is {pct(best['final_acc_mean'])} ({cell_text(best, extra)}), "
        f"the worst {pct(worst['final_acc_mean'])} ({cell_text(worst, extra)}).",
    ]  # fmt: skip
    if cells["mean_abs_change_mean"].notna().any():  # needs two epochs
        change = cells.loc[cells["mean_abs_change_mean"].idxmax()]
        sentences.insert(1, f"The largest mean |change| of a cell is {pp(change['mean_abs_change_mean'])} "
                            f"({cell_text(change, extra)}).")  # fmt: skip
    spread = cells["seed_std"].dropna()
    if len(spread):
        top = cells.loc[spread.idxmax()]
        sentences.append(f"Seeds disagree most for {cell_text(top, extra)}: the std of final accuracy over its "
                         f"{top['n']} seeds is {pp(top['seed_std'])} (median over cells: "
                         f"{pp(spread.median())}).")  # fmt: skip
    return sentences


def removal_text(name: str, before: float, after: float) -> tuple[str, float]:
    """("removes 80% of the {name}" | "adds 25% to the {name}" | "has no {name} to remove",
    the fraction of `before` that `after` removes, NaN when `before` is 0)."""
    if not before > 0:
        return f"has no {name} to remove", math.nan
    share = 1 - after / before
    return (f"removes {share:.0%} of the {name}" if share >= 0 else f"adds {-share:.0%} to the {name}"), share


def precise_bn_findings(summary: pd.DataFrame) -> list[str]:
    """Per BN variant: how PreciseBN and test-batch statistics change the volatility, and
    whether PreciseBN removes most of it (mean |change| and worst drop both at least halved)."""
    sentences = []
    for variant, runs in summary[summary["variant"].isin(BN_VARIANTS)].groupby("variant", observed=True):
        m = runs[ALL_METRICS].mean()
        named = (("mean |change|", "mean_abs_change"), ("worst drop", "worst_drop"))
        texts, shares = zip(*(removal_text(name, m[metric], m[f"{metric}_precise_bn"]) for name, metric in named))
        shares = [s for s in shares if not math.isnan(s)]
        verdict = ("most of the instability comes from the running statistics" if shares and min(shares) >= 0.5 else
                   "the running statistics cause part of the instability" if any(s > 0 for s in shares) else
                   "the running statistics do not cause the instability")  # fmt: skip
        sentences.append(
            f"For {variant} ({plural(len(runs), 'run')}), PreciseBN statistics instead of the running ones take the "
            f"mean |change| from {pp(m['mean_abs_change'])} to {pp(m['mean_abs_change_precise_bn'])} and the worst drop from "
            f"{pp(m['worst_drop'])} to {pp(m['worst_drop_precise_bn'])} (test-batch statistics: "
            f"{pp(m['mean_abs_change_batch_stats'])} and {pp(m['worst_drop_batch_stats'])}) and move test accuracy by "
            f"{m['ema_gap'] * 100:+.1f} pp on average (ema_gap): PreciseBN {join_words(list(texts))}, "
            f"so {verdict}.")  # fmt: skip
    return sentences


def divergence_finding(summary: pd.DataFrame, extra: list[str]) -> str:
    """Which runs diverged (their loss turned non-finite), if any."""
    diverged = summary[summary["diverged"]]
    if diverged.empty:
        return f"No run diverged ({plural(len(summary), 'run')})."
    runs = [f"{cell_text(r, extra)}, seed {r['seed']} (after {r['epochs_used']} finite epochs)"
            for _, r in diverged.iterrows()]  # fmt: skip
    return f"{len(diverged)} of {len(summary)} runs diverged: {'; '.join(runs)}."


def findings(summary: pd.DataFrame, cells: pd.DataFrame, epochs: pd.DataFrame) -> list[str]:
    """The report's findings, each sentence computed from this study's numbers (`epochs`: counted rows)."""
    extra = extra_axes(cells)
    measured = summary[summary["epochs_used"] > 0]  # runs that diverged in epoch 1 have no metrics
    if measured.empty:
        return [divergence_finding(summary, extra)]
    done = cells[cells["final_acc_mean"].notna()]
    return [
        *variant_findings(done, epochs),
        largest_drop_finding(measured, epochs, extra),
        *cell_findings(done, extra),
        *precise_bn_findings(measured),
        divergence_finding(summary, extra),
    ]


# ---------------------------------------------------------------- the reference notebook
def notebook_metrics() -> dict:
    """The stability metrics of the notebook's published log (its numbers, not ours)."""
    metrics = curve_metrics(np.array(NOTEBOOK_TEST_ACC))
    return {**metrics, "gen_gap": NOTEBOOK_FINAL_TRAIN_ACC - NOTEBOOK_TEST_ACC[-1]}


def in_notebook_cell(frame: pd.DataFrame) -> pd.Series:
    """(rows,) bool: rows with the notebook's optimizer, learning rate and batch size."""
    return ((frame["optimizer"] == NOTEBOOK_CELL["optimizer"]) & np.isclose(frame["lr"], NOTEBOOK_CELL["lr"])
            & (frame["batch_size"] == NOTEBOOK_CELL["batch_size"]))  # fmt: skip


def seed_range(values: pd.Series) -> str:
    """ "12.1 pp (seeds: 3.0 to 20.4 pp)": the mean over seeds and their range ("0.0 pp
    (every seed)" when they agree)."""
    if len(values) == 1 or values.min() == values.max():
        return pp(values.mean()) + ("" if len(values) == 1 else " (every seed)")
    return f"{pp(values.mean())} (seeds: {100 * values.min():.1f} to {pp(values.max())})"


def reproduction_verdict(ours: pd.Series, theirs: float) -> str:
    """Whether the notebook's worst drop `theirs` lies within the range of our seeds' `ours`."""
    seeds, s = plural(len(ours), "seed"), "s" if len(ours) == 1 else ""
    if theirs > ours.max():
        extent = "in full" if ours.max() > 0 else "at all"  # smaller swings are a partial reproduction
        return (f"do not reproduce {extent} here: our {seeds} drop{s} at most {pp(ours.max())}, less than the "
                f"notebook's {pp(theirs)}")  # fmt: skip
    if theirs < ours.min():
        return (f"reproduce and are exceeded: our {seeds} drop{s} at least {pp(ours.min())}, more than the "
                f"notebook's {pp(theirs)}")  # fmt: skip
    return (f"reproduce: the notebook's worst drop of {pp(theirs)} lies within the range of our {seeds} "
            f"({100 * ours.min():.1f} to {pp(ours.max())})")  # fmt: skip


def rank_text(values: pd.Series, name: str) -> str:
    """Where bn_before's value stands among the variants' `values` (indexed by variant):
    "the largest worst drop", "the 2nd largest mean |change|", "the smallest ..."."""
    rank = int(values.rank(ascending=False, method="min")[NOTEBOOK_CELL["variant"]])
    if rank == 1:
        return f"the largest {name}"
    if rank == len(values):
        return f"the smallest {name}"
    return f"the {rank}{'nd' if rank == 2 else 'rd' if rank == 3 else 'th'} largest {name}"


def differences_from_notebook(runs: pd.DataFrame) -> list[str]:
    """How our runs' setting differs from the notebook's 5 epochs on all 60,000 images."""
    notes = []
    if set(runs["epochs"]) != {len(NOTEBOOK_TEST_ACC)}:
        notes.append(f"{join_words(sorted({str(e) for e in runs['epochs']}))} epochs instead of {len(NOTEBOOK_TEST_ACC)}")
    limits = runs["limit_train"].dropna().unique()
    if len(limits):
        notes.append(f"{join_words([f'{int(n):,}' for n in sorted(limits)])} training images instead of {TRAIN_SIZE:,}")
    return notes


def notebook_comparison(summary: pd.DataFrame) -> tuple[list[str], pd.DataFrame] | None:
    """Sentences comparing the notebook's log with our bn_before runs at its setting and
    with none and bn_after there, and the table behind them (rows: the notebook, then each
    variant's mean over seeds; columns: CURVE_METRICS + gen_gap); None when the study lacks
    the notebook's cell with runs of two or more finite epochs."""
    cell = summary[in_notebook_cell(summary) & (summary["epochs_used"] > 1)]  # a swing needs two epochs
    ours = cell[cell["variant"] == NOTEBOOK_CELL["variant"]]
    if ours.empty:
        return None
    theirs = notebook_metrics()
    log = ", ".join(f"{100 * a:.1f}" for a in NOTEBOOK_TEST_ACC)
    by_variant = cell.groupby("variant", observed=True)[["mean_abs_change", "worst_drop"]].mean()
    sentences = [
        f"The notebook's published log (bn_before, Adam, learning rate 0.001, batch size 256, "
        f"{len(NOTEBOOK_TEST_ACC)} epochs on all {TRAIN_SIZE:,} training images) has test accuracy {log}% "
        f"— numbers from the notebook, not from this study: mean |change| {pp(theirs['mean_abs_change'])}, "
        f"worst drop {pp(theirs['worst_drop'])}, late std {pp(theirs['late_std'])}.",
        f"This study's bn_before runs at that setting ({plural(len(ours), 'seed')}) have mean |change| "
        f"{seed_range(ours['mean_abs_change'])} and worst drop {seed_range(ours['worst_drop'])}; "
        f"{(ours['worst_drop'] > 0).sum()} of them fall below an earlier best at some epoch.",
    ]  # fmt: skip
    notes = differences_from_notebook(ours)
    if notes:
        sentences.append(f"Our runs differ from the notebook's in {join_words(notes)}.")
    sentences.append(f"The notebook's swings {reproduction_verdict(ours['worst_drop'], theirs['worst_drop'])}.")
    if len(by_variant) > 1:
        others = by_variant.drop(NOTEBOOK_CELL["variant"])
        sentences.append(
            f"At the same setting the mean |change| is {per_variant(others['mean_abs_change'], pp)} and the worst drop "
            f"{per_variant(others['worst_drop'], pp)}: of the {len(by_variant)} variants, bn_before has "
            f"{rank_text(by_variant['worst_drop'], 'worst drop')} and "
            f"{rank_text(by_variant['mean_abs_change'], 'mean |change|')}.")  # fmt: skip
    metrics = CURVE_METRICS + ["gen_gap"]
    ours_by_variant = cell.groupby("variant", observed=True)[metrics].mean()
    table = pd.concat([pd.DataFrame([theirs], index=["notebook log (bn_before)"])[metrics],
                       ours_by_variant.rename(index=lambda v: f"this study: {v}")])  # fmt: skip
    return sentences, table


# ---------------------------------------------------------------- report.md
def md_table(frame: pd.DataFrame) -> str:
    """A Markdown table of `frame`'s columns (cells already formatted as text)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def mean_std(mean: float, std: float) -> str:
    """Fractions as "83.8 ± 1.2" (in % or pp, the table header says which); the mean alone
    without a std; "–" without a mean."""
    if pd.isna(mean):
        return "–"
    return f"{100 * mean:.1f}" + ("" if pd.isna(std) else f" ± {100 * std:.1f}")


def duration(seconds: float) -> str:
    """ "42 s", "3.5 min", "1.2 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def listing(values) -> str:
    """The distinct values with how many runs have each: "cpu (12), NVIDIA H100 (3)"; one value alone."""
    tally = pd.Series(values).fillna("unknown").astype(str).value_counts()
    return str(tally.index[0]) if len(tally) == 1 else ", ".join(f"{v} ({n})" for v, n in tally.items())


def skipped_text(reasons: pd.Series) -> str:
    """ "2 failed; 1 other run file skipped (1 no JSON ...)" from the skipped runs' reason counts."""
    other = reasons.drop("failed", errors="ignore")
    detail = f" ({', '.join(f'{n} {reason}' for reason, n in other.items())})" if len(other) else ""
    return f"{reasons.get('failed', 0)} failed; {plural(int(other.sum()), 'other run file')} skipped{detail}"


def what_was_run(study: StudyResults, summary: pd.DataFrame, n_cells: int) -> list[str]:
    """Bullet lines: the grid, fixed settings, device and versions, run counts, time."""
    values = {k: study.expected[k].drop_duplicates().sort_values().tolist() for k in CONFIG_KEYS}
    axes = [f"{k} ({', '.join(value_text(k, v) for v in vs)})" for k, vs in values.items() if len(vs) > 1]
    fixed = [f"{k} {value_text(k, vs[0])}" for k, vs in values.items() if len(vs) == 1]
    statuses = summary["status"].value_counts()
    span = pd.to_datetime(study.runs["ended"], utc=True).max() - pd.to_datetime(study.runs["started"], utc=True).min()
    return [
        f"**Grid**: {' × '.join(axes) or 'a single run'}: {len(study.expected)} runs in {n_cells} cells "
        f"({study.grid_source}).",
        f"**Fixed settings**: {', '.join(fixed) or 'none'}.",
        f"**Device**: {listing(study.runs['device'])}; torch {listing(study.runs['torch_version'])}, "
        f"bnstudy {listing(study.runs['bnstudy_version'])}, commit {listing(study.runs['git_commit'])}.",
        f"**Runs**: {len(summary)} of {len(study.expected)} done ({statuses.get('complete', 0)} complete, "
        f"{statuses.get('diverged', 0)} diverged); {skipped_text(study.skipped['reason'].value_counts())}.",
        f"**Time**: {duration(summary['train_seconds'].sum())} training + {duration(summary['eval_seconds'].sum())} "
        f"evaluation, summed over runs; {duration(span.total_seconds())} from the first start to the last end.",
    ]  # fmt: skip


def incomplete_cells(missing: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """One row per cell with missing runs: cell (in words), missing (seeds and why)."""
    rows = [{"cell": cell_text(runs.iloc[0], extra),
             "missing runs": ", ".join(f"seed {r['seed']} ({r['reason']})" for _, r in runs.iterrows())}
            for _, runs in missing.groupby(CELL_KEYS, dropna=False, observed=True)]  # fmt: skip
    return pd.DataFrame(rows, columns=["cell", "missing runs"])


def ranked_table(cells: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """One variant's cells ranked by mean final accuracy (cells without runs last), as text."""
    cells = cells.sort_values("final_acc_mean", ascending=False, na_position="last")
    table = pd.DataFrame({"rank": [str(i + 1) if n else "–" for i, n in enumerate(cells["n"])]})
    for key in ["lr", "batch_size", *extra]:
        table[SETTING_NAMES.get(key, key)] = [value_text(key, v) for v in cells[key]]
    table["runs"] = [f"{n} of {e}" for n, e in zip(cells["n"], cells["n_expected"])]
    columns = {"final_acc": "final acc (%)", "best_acc": "best acc (%)", "mean_abs_change": "mean abs change (pp)",
               "worst_drop": "worst drop (pp)", "late_std": "late std (pp)", "gen_gap": "gen gap (pp)",
               "ema_gap": "PreciseBN gain (pp)"}  # fmt: skip
    if not cells["ema_gap_mean"].notna().any():
        columns.pop("ema_gap")  # `none` has no BN statistics to recompute
    for metric, title in columns.items():
        table[title] = [mean_std(m, sd) for m, sd in zip(cells[f"{metric}_mean"], cells[f"{metric}_std"])]
    table["diverged"] = cells["n_diverged"].astype(str).to_numpy()
    return table


def render_report(study: StudyResults, summary: pd.DataFrame, cells: pd.DataFrame, missing: pd.DataFrame,
                  figures: list[str]) -> str:  # fmt: skip
    """report.md's text. `missing`: incomplete_cells(...); `figures`: the names of the
    figures written under figures/."""
    extra = extra_axes(cells)
    epochs = study.epochs[counts(study.epochs)]
    parts = [f"# Batch-normalization stability report: study `{study.name}`",
             "Accuracies in percent (%), changes in percentage points (pp); ± is the standard deviation over "
             "seeds. Written by `bnstudy report` from the run files; every number and sentence below is "
             "computed from them.",
             "## What was run", "\n".join(f"- {line}" for line in what_was_run(study, summary, len(cells)))]  # fmt: skip
    if len(missing):
        parts += ["## Incomplete cells", f"{len(missing)} of {len(cells)} cells lack runs:", md_table(missing)]
    parts += ["## Findings", "\n".join(f"- {sentence}" for sentence in findings(summary, cells, epochs))]
    comparison = notebook_comparison(summary)
    if comparison is not None:
        sentences, table = comparison
        unit = {m: " (%)" if m.endswith("acc") else " (pp)" for m in table.columns}
        shown = table.map(lambda v: f"{100 * v:.1f}").rename(columns=lambda m: m.replace("_", " ") + unit[m])
        parts += ["## The reference notebook's test-accuracy swings", " ".join(sentences),
                  md_table(shown.reset_index(names="source"))]  # fmt: skip
    parts.append("## Cells ranked by final accuracy, per variant")
    for variant, block in cells.groupby("variant", observed=True):
        parts += [f"### {variant}", md_table(ranked_table(block, extra))]
    parts.append("## Figures")
    if not figures:
        parts.append("None: no run has an epoch with finite loss and accuracy.")
    for i, name in enumerate(figures, 1):
        heading, caption = FIGURES[name]
        parts += [f"### {i}. {heading}", f"![{heading}](figures/{name}.png)",
                  f"{caption} Also as [SVG](figures/{name}.svg)."]  # fmt: skip
    parts += ["## Files and conventions", FILES_NOTE]
    return "\n\n".join(parts) + "\n"


FILES_NOTE = """\
- `summary.csv`: one row per run: its settings, status, `diverged`, `epochs_used`, the
  stability metrics (fractions, not %), and the training/evaluation seconds.
- `cells.csv`: one row per grid cell (all settings but the seed): `n` runs of `n_expected`,
  `n_diverged`, `seed_std`, and `<metric>_mean` / `<metric>_std` over seeds.
- A run's metrics use its epochs whose loss and accuracy are finite: a diverged run counts up
  to its last finite epoch and is flagged.
- `late_std` is the population standard deviation of the last ceil(E/2) epochs; spreads over
  seeds are sample standard deviations.
- The `*_precise_bn` and `*_batch_stats` metrics are the same stability metrics of the test
  accuracy measured with PreciseBN and with test-batch statistics."""


@dataclasses.dataclass
class Outputs:
    """What write_report wrote, and what the CLI says about it."""

    summary_csv: Path
    cells_csv: Path
    figures: list[Path]
    report_md: Path
    runs: int
    skipped: int
    incomplete: pd.DataFrame  # incomplete_cells(...)


def write_report(root: str | os.PathLike) -> Outputs:
    """Load the study in `root` and write summary.csv, cells.csv, figures/ and report.md
    there. UserError when there is nothing to report or `root` is not writable."""
    study = load_results(root)
    check_writable(study.root)
    summary = summarize_runs(study)
    cells = aggregate_cells(summary, study.expected)
    incomplete = incomplete_cells(missing_runs(study), extra_axes(cells))
    figures = draw_figures(study, summary, cells)
    atomic_write_text(study.root / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(study.root / "cells.csv", cells.to_csv(index=False))
    pngs = save_figures(figures, study.root / "figures")
    atomic_write_text(study.root / "report.md", render_report(study, summary, cells, incomplete, list(figures)))
    return Outputs(study.root / "summary.csv", study.root / "cells.csv", pngs, study.root / "report.md",
                   len(summary), len(study.skipped), incomplete)  # fmt: skip
