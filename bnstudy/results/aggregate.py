"""A study's run files -> per-run stability metrics (summary) and per-cell tables (cells).

    DIR/runs/<run_id>.csv + .json   input (bnstudy.results.store's layout); only done runs (complete or
                                    diverged, files checked by RunStore.check) count; the rest
                                    (failed, damaged, in flight) are skipped and named
    DIR/runs/<run_id>.evals.csv     a done run's points (evals_per_epoch k > 1): its fine curve

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
- A run is *stuck* when its best counted test accuracy stays below STUCK_BELOW (20%): it
  never left chance (10%, ten balanced classes). Its flat curve has no volatility to speak
  of, so the cells' stability means and stds (STABILITY_METRICS) leave it out; summary.csv
  flags it (`stuck`) and cells.csv counts it (`n_stuck`). Its accuracy metrics stay in.
- The fine curve: a run with k > 1 points per epoch also gets the volatility metrics of
  its points of the counted epochs in step order (FINE_METRICS; NaN without points):
  fine_mean_abs_change is the mean |change| from one point to the next (a k-th of an epoch
  apart, so not comparable with the per-epoch mean_abs_change), fine_worst_drop the worst
  drop below an earlier point's best (never less than worst_drop: the epoch ends are among
  the points), fine_late_std the population std of the points of the last ceil(E/2)
  epochs (the span late_std covers); the same of the PreciseBN points (`*_precise_bn`).
- Accuracies are fractions here and in the CSVs; figures and report.md show percent (%)
  and percentage points (pp).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bnstudy.config import spec
from bnstudy.errors import UserError
from bnstudy.config.settings import BY_NAME, CSV_COLUMNS, EVALS_COLUMNS, METRIC_COLUMNS, RUN_SETTINGS, from_record
from bnstudy.results.runfiles import RunState, RunStatus
from bnstudy.results.store import RunStore

CONFIG_KEYS = list(RUN_SETTINGS)  # a run's identity; `study` only names its folder
CELL_KEYS = [k for k in CONFIG_KEYS if k != "seed"]

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
# The same volatility on the fine curve (runs/<run_id>.evals.csv): a point's accuracies, their metrics' suffixes.
POINT_CURVES = {"test_acc": "", "test_acc_precise_bn": "_precise_bn"}
FINE_METRICS = [f"fine_{m}{suffix}" for suffix in POINT_CURVES.values()
                for m in ("mean_abs_change", "worst_drop", "late_std")]  # fmt: skip
ALL_METRICS = RUN_METRICS + DIAGNOSTIC_METRICS + FINE_METRICS
# The metrics of how a curve moves, which a run stuck at chance would show as perfect calm.
STABILITY_METRICS = ["mean_abs_change", "worst_drop", "late_std", *DIAGNOSTIC_METRICS, *FINE_METRICS]

# Chance is 10% (ten balanced classes): a constant guess scores about 10% of the test set,
# random guesses 10% +- 1.3 pp on 512 test images (binomial std) and +- 0.3 pp on all
# 10,000. 20% is some 7 such stds above chance even on 512 images, while any run that
# learns passes it within its first epoch (the real studies' lowest best is 75%): the
# margin separates the two with room on both sides.
STUCK_BELOW = 0.20


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


def stuck(best_acc: pd.Series) -> pd.Series:
    """(runs,) bool: which runs are stuck at chance, from their best counted test accuracy
    (below STUCK_BELOW; a run without a counted epoch has no best and is not stuck)."""
    return best_acc < STUCK_BELOW


def fine_metrics(points: pd.DataFrame) -> dict:
    """FINE_METRICS of one run's points (EVALS_COLUMNS rows of its counted epochs); see the
    module's docstring. NaN where a curve has no point (`none` has no PreciseBN)."""
    points = points.sort_values("step")
    late = (points["epoch"] > points["epoch"].max() // 2).to_numpy()  # the last ceil(E/2) epochs
    metrics = {}
    for col, suffix in POINT_CURVES.items():
        acc = points[col].to_numpy(dtype=float)
        kept = np.isfinite(acc)
        curve = curve_metrics(acc[kept])
        metrics[f"fine_mean_abs_change{suffix}"] = curve["mean_abs_change"]
        metrics[f"fine_worst_drop{suffix}"] = curve["worst_drop"]
        metrics[f"fine_late_std{suffix}"] = acc[kept & late].std(ddof=0) if (kept & late).any() else math.nan
    return metrics


# ---------------------------------------------------------------- loading a study
RUN_INFO = ["study", "device", "started", "ended", "torch_version", "bnstudy_version", "git_commit"]  # from the JSON


POINT_TYPES = {"run_id": str, "epoch": int, "point": int, "step": int, "epoch_fraction": float, "test_acc": float,
               "test_acc_precise_bn": float}  # fmt: skip


def empty_points() -> pd.DataFrame:
    """A points table without rows (a study without fine curves)."""
    return pd.DataFrame(columns=EVALS_COLUMNS).astype(POINT_TYPES)


@dataclasses.dataclass
class StudyResults:
    """A study's results, read from disk.

    epochs:   one row per epoch of every done run: run_id, study, the JSON's config
              (CONFIG_KEYS), status, device, METRIC_COLUMNS; typed (variant an ordered category).
    runs:     one row per done run: run_id, CONFIG_KEYS, status, RUN_INFO.
    skipped:  one row per run file set that does not count: run_id, state (failed, damaged
              or pending: a CSV without its JSON), reason (RunCheck.reason).
    expected: one row per run the grid should hold: run_id, CONFIG_KEYS.
    grid_source: where `expected` comes from, in words.
    extra:    one row per run file set in runs/ that the spec (spec.toml) does not hold,
              e.g. left by an earlier version of it: run_id, state. Without a spec, none.
    extra_included: whether the done extra runs are in `epochs` and `runs` (else only the
              spec's runs are; skipped and expected never hold extra runs).
    points:   the fine curves: EVALS_COLUMNS rows of the runs in `runs` with
              evals_per_epoch > 1, every point of every epoch they finished (load_points).
    """

    root: Path
    epochs: pd.DataFrame
    runs: pd.DataFrame
    skipped: pd.DataFrame
    expected: pd.DataFrame
    grid_source: str
    extra: pd.DataFrame
    extra_included: bool
    points: pd.DataFrame = dataclasses.field(default_factory=empty_points)

    @property
    def name(self) -> str:
        return str(self.runs["study"].iloc[0])


def column_type(key: str):
    """The pandas type of a setting's column, from its declaration: a setting with choices
    an ordered category (in the declared order: the order of legends and tables), an
    optional integer (None: all images) nullable Int64, else its own type."""
    setting = BY_NAME[key]
    if setting.choices is not None:
        return pd.CategoricalDtype(setting.choices, ordered=True)
    return "Int64" if setting.optional and setting.kind is int else setting.kind


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the setting columns it has (and `epoch`) cast to their types (column_type)."""
    types = {key: column_type(key) for key in CONFIG_KEYS if key in frame.columns}
    return frame.astype(types | ({"epoch": int} if "epoch" in frame.columns else {}))


def load_run(store: RunStore, run_id: str) -> tuple[pd.DataFrame | None, dict]:
    """(the run's epoch rows with the JSON's settings and status as columns, or None when
    the run is not done; its record: run_id, state, `reason` it does not count or None, and,
    where its JSON checks out, `config` and the JSON's status/RUN_INFO)."""
    check = store.check(run_id)
    done = check.state.is_done()
    record = {"run_id": run_id, "state": check.state, "reason": None if done else check.reason}
    if check.config is None:
        return None, record
    config = check.config.identity()
    record |= {"config": config, "status": RunStatus(check.metadata["status"]),
               **{k: check.metadata.get(k) for k in RUN_INFO}}  # fmt: skip
    if not done:
        return None, record
    # The JSON's settings are the whole config (the CSV repeats only some of them).
    rows = pd.DataFrame(check.rows, columns=CSV_COLUMNS)[METRIC_COLUMNS]
    return rows.assign(run_id=run_id, study=check.config.study, **config, status=record["status"],
                       device=check.metadata.get("device")), record  # fmt: skip


def runs_present(configs: list[dict]) -> list[spec.RunConfig]:
    """The runs of `configs` (the settings of each run whose JSON gives them, done or not),
    once each, in the order of their settings' values: the grid of a folder without a spec.
    (The product of every setting's values seen is no grid: six `bnstudy run`s that differ
    in six settings would expect 64 runs.)"""
    key = lambda c: tuple((c[k] is not None, c[k]) for k in CONFIG_KEYS)  # noqa: E731  (None: all images, first)
    unique = {config.run_id: config for config in map(from_record, sorted(configs, key=key))}
    return list(unique.values())


def expected_grid(store: RunStore, configs: list[dict]) -> tuple[list[spec.RunConfig], str, bool]:
    """(the runs the study should hold, where that list comes from in words, whether it is
    the spec's): the sweep's copy of its spec when there is a readable one, else exactly the
    runs there (`configs`)."""
    problem = "no spec.toml"
    if store.spec_path.is_file():
        try:
            return spec.load_study(store.spec_path).runs(), f"from {store.spec_path.name}", True
        except UserError as exc:  # an old or damaged copy must not stop the report
            problem = f"{store.spec_path.name} is unusable: {exc}"
    return runs_present(configs), f"the runs in {store.runs_dir.name}/: {problem}", False


def config_frame(configs: list[spec.RunConfig], store: RunStore) -> pd.DataFrame:
    """One typed row per config: run_id (the id of its files in `store`: RunStore.run_id_of),
    CONFIG_KEYS."""
    rows = [{"run_id": store.run_id_of(c), **c.identity()} for c in configs]
    return typed(pd.DataFrame(rows, columns=["run_id", *CONFIG_KEYS]))


def load_results(root: str | os.PathLike, include_extra: bool = False) -> StudyResults:
    """Read the study in `root`: the runs of its spec (the sweep's spec.toml), or exactly the
    runs there when it has no usable spec (e.g. `bnstudy run --out`). Run files the spec does
    not hold are `extra`: listed, and reported beside the spec's runs only when they are
    done and `include_extra` asks for it. UserError when there is no run to report."""
    root = Path(root)
    store = RunStore(root)
    if not root.is_dir():
        problem = "not a folder" if root.exists() else "no such folder"
        raise UserError(f"{root}: {problem}; give a study's results folder, e.g. results/default "
                        "(`make sweep` makes one)")  # fmt: skip
    run_ids = store.run_ids_on_disk()
    if not run_ids:
        raise UserError(f"{root}: no run files in {store.runs_dir} (is this a study folder?)")
    loaded = dict(zip(run_ids, (load_run(store, run_id) for run_id in run_ids)))
    records = pd.DataFrame([record for _, record in loaded.values()])
    observed = records["config"].dropna().tolist() if "config" in records else []
    grid, grid_source, from_spec = expected_grid(store, observed)
    expected = config_frame(grid, store)
    # Without a spec the grid is the runs themselves: nothing is extra.
    in_spec = records["run_id"].isin(expected["run_id"]) | (not from_spec)
    extra = records.loc[~in_spec, ["run_id", "state"]].reset_index(drop=True)
    records = records[in_spec | (include_extra & records["reason"].isna())]
    skipped = records.loc[records["reason"].notna(), ["run_id", "state", "reason"]].reset_index(drop=True)
    done = records[records["reason"].isna()]
    if done.empty:
        reasons = ", ".join(f"{n} {state}" for state, n in skipped["state"].value_counts().items())
        if len(extra):
            reasons += f"{', ' if reasons else ''}{len(extra)} not in {store.spec_path.name}"
        raise UserError(f"{root}: no complete or diverged run to report ({reasons})")
    runs = typed(pd.concat([done[["run_id"]].reset_index(drop=True), pd.DataFrame(done["config"].tolist()),
                            done[["status", *RUN_INFO]].reset_index(drop=True)], axis=1))  # fmt: skip
    epochs = pd.concat([loaded[run_id][0] for run_id in done["run_id"]], ignore_index=True)
    epochs = typed(epochs[["run_id", "study", *CONFIG_KEYS, "status", "device", *METRIC_COLUMNS]])
    return StudyResults(root, epochs, runs, skipped, expected, grid_source, extra, include_extra,
                        load_points(store, runs))  # fmt: skip


def load_points(store: RunStore, runs: pd.DataFrame) -> pd.DataFrame:
    """The points files of `runs` (done runs: RunStore.check has made sure that each with
    evals_per_epoch > 1 has its whole file) as one typed table of EVALS_COLUMNS."""
    fine = runs.loc[runs["evals_per_epoch"] > 1, "run_id"]
    frames = [pd.read_csv(store.evals_path(run_id)) for run_id in fine]
    return pd.concat(frames, ignore_index=True).astype(POINT_TYPES) if frames else empty_points()


# ---------------------------------------------------------------- tables
def summarize_runs(study: StudyResults) -> pd.DataFrame:
    """summary.csv: one row per done run, in grid order: run_id, CONFIG_KEYS, status,
    diverged, stuck, epochs_used, ALL_METRICS, train_seconds and eval_seconds (sums over epochs)."""
    by_run = study.epochs.groupby("run_id", sort=False)
    metrics = pd.DataFrame({run_id: run_metrics(run) for run_id, run in by_run}).T
    seconds = by_run[["train_seconds", "eval_seconds"]].sum()
    summary = study.runs[["run_id", *CONFIG_KEYS, "status"]].set_index("run_id").join(metrics).join(seconds)
    summary = summary.join(fine_summary(study))
    summary["diverged"] = summary["status"] == RunStatus.DIVERGED
    summary = summary.astype({"epochs_used": int, **dict.fromkeys(ALL_METRICS, float)})
    summary["stuck"] = stuck(summary["best_acc"])
    columns = [*CONFIG_KEYS, "status", "diverged", "stuck", "epochs_used", *ALL_METRICS,
               "train_seconds", "eval_seconds"]  # fmt: skip
    return summary[columns].reset_index().sort_values([*CELL_KEYS, "seed"], ignore_index=True)


def fine_summary(study: StudyResults) -> pd.DataFrame:
    """FINE_METRICS per run (index run_id, every run of study.runs), from the points of its
    counted epochs; NaN for a run without points."""
    counted = study.epochs.loc[counts(study.epochs), ["run_id", "epoch"]]
    points = study.points.merge(counted, on=["run_id", "epoch"])  # a diverged run's last epoch means nothing
    fine = pd.DataFrame({run_id: fine_metrics(run) for run_id, run in points.groupby("run_id")}, index=FINE_METRICS)
    return fine.T.reindex(study.runs["run_id"])


def aggregate_cells(summary: pd.DataFrame, expected: pd.DataFrame) -> pd.DataFrame:
    """cells.csv: one row per grid cell (CELL_KEYS), expected cells without runs included:
    n (done runs), n_expected, n_diverged, n_stuck, seed_std (sample std of final_acc over
    seeds), then <metric>_mean and <metric>_std (ddof=1) for each of ALL_METRICS; those of
    STABILITY_METRICS over the cell's runs that are not stuck (NaN when all are)."""
    # Masked to NaN, a stuck run's stability metrics drop out of the mean and std (both skip NaN).
    values = summary.assign(**{m: summary[m].mask(summary["stuck"]) for m in STABILITY_METRICS})
    groups = values.groupby(CELL_KEYS, dropna=False, observed=True)
    stats = groups[ALL_METRICS].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    sizes = groups.agg(n=("run_id", "size"), n_diverged=("diverged", "sum"), n_stuck=("stuck", "sum"))
    n_expected = expected.groupby(CELL_KEYS, dropna=False, observed=True).size().rename("n_expected")
    cells = sizes.join(stats).join(n_expected, how="outer")
    cells[["n", "n_diverged", "n_stuck"]] = cells[["n", "n_diverged", "n_stuck"]].fillna(0).astype(int)
    # A done cell outside the expected grid (its spec changed since) expects just what it has.
    cells["n_expected"] = cells["n_expected"].fillna(cells["n"]).astype(int)
    cells["seed_std"] = cells["final_acc_std"]
    stat_columns = [f"{m}_{s}" for m in ALL_METRICS for s in ("mean", "std")]
    return cells.reset_index()[[*CELL_KEYS, "n", "n_expected", "n_diverged", "n_stuck", "seed_std", *stat_columns]]


def missing_runs(study: StudyResults) -> pd.DataFrame:
    """The expected runs that are not done: run_id, CONFIG_KEYS, reason (why the skipped
    run does not count: "failed", "damaged: <what>", "no JSON (in flight or killed)"; or
    "not run")."""
    missing = study.expected[~study.expected["run_id"].isin(study.runs["run_id"])]
    skipped = study.skipped[["run_id", "state", "reason"]].itertuples(index=False)
    reasons = {run_id: f"damaged: {reason}" if state == RunState.DAMAGED else reason
               for run_id, state, reason in skipped}  # fmt: skip
    reason = [reasons.get(run_id, "not run") for run_id in missing["run_id"]]
    return missing.assign(reason=reason).reset_index(drop=True)
