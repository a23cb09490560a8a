"""The comparison with the reference notebook's published logs, aligned by training progress.

The notebook (d2l, batch-norm chapter: bn_before, Adam, learning rate 1e-3, batch 256,
sigmoid, nn.BatchNorm's momentum 0.1) published two logs of 5 epochs. Neither starts from a
fresh network (log A's first epoch already has train accuracy 0.909), so its epoch numbers
mean nothing next to ours: each of our runs at that setting is compared over its own window.

- Window rule. A log gives the train accuracy of its first and last epoch only, f and l.
  A run's window for it is the WINDOW consecutive counted epochs s..s+4 that minimise the
  mismatch sqrt(((train_acc(s) - f)^2 + (train_acc(s+4) - l)^2) / 2), the earliest on a tie.
- A run *reaches* a log when it has WINDOW counted epochs and its train accuracy gets within
  TOLERANCE of l at some epoch. Only runs that reach a log are compared with it; when no
  bn_before run does, the study is too short for that log and the report says so.
- In a window: the stability of the epoch-end test accuracies (the log's own sampling), of
  the PreciseBN ones, and of the fine curve (runs/<run_id>.evals.csv): its points from the end
  of epoch s to the end of epoch s+4, 1 + 4k of them at k points an epoch, a superset of the
  epoch ends (so its worst drop is never smaller, its lowest accuracy never higher).
- Verdict per log, from bn_before's worst drops at the epoch ends, like for like with the
  log's: it *reproduces* when the log's worst drop is at most our largest; *partly* when our
  seeds drop, but all less than the log; *not* when none of them drops at all.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from bnstudy.results.aggregate import EVAL_MODES, POINT_CURVES, curve_metrics
from bnstudy.config.settings import BY_NAME, TRAIN_SIZE
from bnstudy.config.variants import VARIANTS
from bnstudy.results.metrics import METRICS, label
from bnstudy.report.wording import join_words, pct, plural, pp

WINDOW = 5  # epochs, as in each log
TOLERANCE = 0.005  # how close to a log's last train accuracy a run must get to reach it
NOTEBOOK_VARIANT = "bn_before"
NOTEBOOK_SETTING = {"optimizer": "adam", "lr": 1e-3, "batch_size": 256,
                    "activation": BY_NAME["activation"].default,
                    "bn_momentum": BY_NAME["bn_momentum"].default}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class NotebookLog:
    """One published log: test accuracy per epoch, and the train accuracy of its first and
    last epoch (all it tells of the train accuracy)."""

    name: str
    test_acc: tuple[float, ...]
    train_first: float
    train_last: float

    def metrics(self) -> dict:
        """The log's own window metrics (its numbers, not ours), keyed as window_metrics."""
        acc = np.array(self.test_acc)
        return {"train_first": self.train_first, "train_last": self.train_last, **stability(acc),
                "late_std": curve_metrics(acc)["late_std"], "gen_gap": self.train_last - acc[-1]}  # fmt: skip


LOGS = (NotebookLog("A", (0.838, 0.821, 0.704, 0.842, 0.686), 0.909, 0.919),
        NotebookLog("B", (0.835, 0.802, 0.857, 0.801, 0.805), 0.897, 0.908))  # fmt: skip


def in_notebook_setting(frame: pd.DataFrame) -> pd.Series:
    """(rows,) bool: rows at the notebook's setting but for the variant (NOTEBOOK_SETTING)."""
    same = [np.isclose(frame[k], v) if isinstance(v, float) else frame[k] == v for k, v in NOTEBOOK_SETTING.items()]
    return pd.Series(np.logical_and.reduce(same), index=frame.index)


def has_notebook_cell(epochs: pd.DataFrame) -> bool:
    """Whether `epochs` hold a bn_before run at the notebook's setting (the section and figure need one)."""
    return bool((in_notebook_setting(epochs) & (epochs["variant"] == NOTEBOOK_VARIANT)).any())


# ---------------------------------------------------------------- windows
def best_window(train_acc: np.ndarray, log: NotebookLog) -> tuple[int, float] | None:
    """(index of the window's first epoch in `train_acc`, its mismatch) by the window rule;
    None for fewer than WINDOW epochs."""
    if len(train_acc) < WINDOW:
        return None
    first, last = train_acc[: len(train_acc) - WINDOW + 1], train_acc[WINDOW - 1 :]
    mismatch = np.sqrt(((first - log.train_first) ** 2 + (last - log.train_last) ** 2) / 2)
    i = int(np.argmin(mismatch))  # the first minimum: the earliest window on a tie
    return i, float(mismatch[i])


def find_windows(epochs: pd.DataFrame, log: NotebookLog) -> pd.DataFrame:
    """One row per run at the notebook's setting (`epochs`: counted rows): run_id, variant,
    seed, start and end (the window's epochs, NaN without one), mismatch, highest_train
    (its highest train accuracy), reached."""
    rows = []
    for run_id, run in epochs[in_notebook_setting(epochs)].groupby("run_id", sort=False):
        run = run.sort_values("epoch")
        train = run["train_acc"].to_numpy(dtype=float)
        found = best_window(train, log)
        start = int(run["epoch"].iloc[found[0]]) if found else math.nan
        rows.append({"run_id": run_id, "variant": str(run["variant"].iloc[0]), "seed": run["seed"].iloc[0],
                     "start": start, "end": start + WINDOW - 1, "mismatch": found[1] if found else math.nan,
                     "highest_train": train.max(),
                     "reached": found is not None and train.max() >= log.train_last - TOLERANCE})  # fmt: skip
    windows = pd.DataFrame(rows, columns=["run_id", "variant", "seed", "start", "end", "mismatch", "highest_train",
                                          "reached"])  # fmt: skip
    in_order = lambda column: column.map(VARIANTS.index) if column.name == "variant" else column  # noqa: E731
    return windows.sort_values(["variant", "seed"], key=in_order, ignore_index=True)  # as every legend and table


def in_window(frame: pd.DataFrame, position: str, start: int, end: int) -> pd.DataFrame:
    """Rows of `frame` whose `position` (an epoch, or a point's epoch_fraction: exactly e at
    the end of epoch e, step S of S) lies from the end of epoch `start` to that of `end`."""
    return frame[(frame[position] >= start) & (frame[position] <= end)]


def stability(acc: np.ndarray, prefix: str = "", suffix: str = "") -> dict:
    """mean_abs_change, worst_drop and lowest_acc of a curve (NaN for an empty one), named
    f"{prefix}{metric}{suffix}"."""
    curve = curve_metrics(acc) | {"lowest_acc": acc.min() if acc.size else math.nan}
    return {f"{prefix}{name}{suffix}": curve[name] for name in ("mean_abs_change", "worst_drop", "lowest_acc")}


def window_metrics(run: pd.DataFrame, points: pd.DataFrame, start: int, end: int) -> dict:
    """A run's metrics in its window: train accuracy at its first and last epoch, late_std
    and gen_gap of the epoch ends, and stability() of the epoch ends and of the fine curve
    (prefix "fine_"), each in eval mode and with PreciseBN (suffix "_precise_bn"). `run`:
    its counted rows; `points`: its points (none without a fine curve)."""
    ends = in_window(run, "epoch", start, end).sort_values("epoch")
    fine = in_window(points, "epoch_fraction", start, end).sort_values("step")
    metrics = {"train_first": ends["train_acc"].iloc[0], "train_last": ends["train_acc"].iloc[-1],
               "late_std": curve_metrics(ends["test_acc"].to_numpy())["late_std"],
               "gen_gap": ends["train_acc"].iloc[-1] - ends["test_acc"].iloc[-1]}  # fmt: skip
    for prefix, frame in (("", ends), ("fine_", fine)):
        for column, suffix in POINT_CURVES.items():
            metrics |= stability(frame[column].dropna().to_numpy(dtype=float), prefix, suffix)
    return metrics


def compare_runs(epochs: pd.DataFrame, points: pd.DataFrame, log: NotebookLog) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(find_windows(...), one row per run that reaches `log`: its window and window_metrics)."""
    windows = find_windows(epochs, log)
    rows = [{**w, **window_metrics(epochs[epochs["run_id"] == w["run_id"]], points[points["run_id"] == w["run_id"]],
                                   w["start"], w["end"])}
            for w in windows[windows["reached"]].to_dict("records")]  # fmt: skip
    return windows, pd.DataFrame(rows)


def window_curves(epochs: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Each run's test accuracy in each window it reaches, for the figure: one row per (log,
    run_id, position, statistics: EVAL_MODES' words): variant, seed, accuracy (%). The fine
    curve's points where the run has one, else its epoch ends; `position` counts epochs into
    the window, 1 at the end of its first epoch, as the log's epochs. `epochs`: counted rows."""
    frames = []
    for log in LOGS:
        windows = find_windows(epochs, log)
        for w in windows[windows["reached"]].itertuples():
            fine = points[points["run_id"] == w.run_id]
            frame, position = (fine, "epoch_fraction") if len(fine) else (epochs[epochs["run_id"] == w.run_id], "epoch")
            curve = in_window(frame, position, w.start, w.end)
            frames.append(pd.DataFrame({"log": log.name, "run_id": w.run_id, "variant": w.variant, "seed": w.seed,
                                        "position": curve[position] - w.start + 1,
                                        **{c: curve[c] for c in POINT_CURVES}}))  # fmt: skip
    columns = ["log", "run_id", "variant", "seed", "position", "statistics", "accuracy"]
    if not frames:
        return pd.DataFrame(columns=columns)
    long = pd.concat(frames, ignore_index=True).melt(id_vars=columns[:5], value_vars=list(POINT_CURVES),
                                                     var_name="statistics", value_name="accuracy")  # fmt: skip
    return long.dropna(subset=["accuracy"]).assign(
        accuracy=lambda f: 100 * f["accuracy"].astype(float), statistics=lambda f: f["statistics"].map(EVAL_MODES)
    )[columns]


# ---------------------------------------------------------------- verdicts
def verdict(ours: pd.Series, theirs: float) -> tuple[str, str]:
    """("reproduces" | "partly" | "not", why in words) for our seeds' worst drops `ours`
    against the log's worst drop `theirs` (see the module's docstring)."""
    seeds = plural(len(ours), "seed")
    if theirs <= ours.max():
        where = "lies within" if theirs >= ours.min() else "is below"
        return "reproduces", f"its {pp(theirs)} {where} our {seeds}' range, {span(ours, pp)}"
    if ours.max() > 0:
        return "partly", f"our {seeds} drop at most {pp(ours.max())} against its {pp(theirs)}"
    return "not", f"none of our {seeds} drops in its window, against its {pp(theirs)}"


def span(values: pd.Series, fmt) -> str:
    """ "3.0 to 20.4 pp" (with fmt=pp), or one value when they agree."""
    low, high = fmt(values.min()), fmt(values.max())
    return low if low == high else f"{low.removesuffix(' pp').removesuffix('%')} to {high}"


def log_sentence(log: NotebookLog, ours: pd.DataFrame) -> str:
    """One log's verdict from bn_before's runs that reach it (`ours`: compare_runs rows)."""
    if ours.empty:
        return f"Log {log.name}: no bn_before run reaches its train accuracy, so the study is too short for it."
    word, why = verdict(ours["worst_drop"], log.metrics()["worst_drop"])
    text = f"Log {log.name}: {word} at the epoch ends ({why})"
    fine = ours["fine_worst_drop"].dropna()
    if len(fine):  # swings between the epoch ends, which the log could not have shown
        text += f"; between them our seeds drop up to {pp(fine.max())}"
    return text + "."


# ---------------------------------------------------------------- the report's section
TABLE_COLUMNS = {  # window metric: its column in the report, saying which curve it is from
    "train_first": "train acc, first epoch (%)", "train_last": "train acc, last epoch (%)",
    **{m: f"{label(m)}, epoch ends ({METRICS[m].unit})" for m in ("worst_drop", "mean_abs_change")},
    "lowest_acc": "lowest acc, epoch ends (%)", "late_std": f"{label('late_std')}, epoch ends (pp)",
    "gen_gap": f"{label('gen_gap')}, last epoch (pp)",
    "worst_drop_precise_bn": f"{label('worst_drop_precise_bn')}, epoch ends (pp)",
    "fine_worst_drop": f"{label('worst_drop')}, every point (pp)", "fine_lowest_acc": "lowest acc, every point (%)",
    "fine_worst_drop_precise_bn": f"{label('worst_drop_precise_bn')}, every point (pp)",
}  # fmt: skip


def comparison_table(results: list[tuple[NotebookLog, pd.DataFrame]]) -> pd.DataFrame:
    """Per log, its own row, then each variant's mean over the runs that reach it
    (columns: TABLE_COLUMNS' keys; fractions, NaN where not measured)."""
    rows = {}
    for log, compared in results:
        rows[f"log {log.name}: notebook"] = log.metrics()
        for variant, runs in compared.groupby("variant", sort=False) if len(compared) else ():
            rows[f"log {log.name}: {variant} ({plural(len(runs), 'run')})"] = runs[list(TABLE_COLUMNS)].mean()
    return pd.DataFrame(rows).T.reindex(columns=list(TABLE_COLUMNS)).astype(float)


@dataclasses.dataclass(frozen=True)
class NotebookSection:
    """The report's comparison with the notebook's logs: at most 3 sentences and the table
    (comparison_table), or, when there is nothing to compare, `absent`: why."""

    sentences: list[str]
    table: pd.DataFrame
    absent: str | None
    verdicts: dict[str, str]  # log name -> "reproduces", "partly", "not" or "too short"


METHOD = (f"Each run at the notebook's setting is compared over its own window: the {WINDOW} consecutive epochs "
          f"whose first and last train accuracy best match the log's (root mean square), since neither log starts "
          f"from a fresh network.")  # fmt: skip


def notebook_section(epochs: pd.DataFrame, points: pd.DataFrame) -> NotebookSection:
    """The notebook comparison of a study (`epochs`: counted rows; `points`: its fine
    curves, StudyResults.points)."""
    if not has_notebook_cell(epochs):
        return NotebookSection([], pd.DataFrame(), "the study has no bn_before run at the notebook's setting (Adam, "
                               "learning rate 0.001, batch size 256, sigmoid, BN momentum 0.1)", {})  # fmt: skip
    epochs = epochs[in_notebook_setting(epochs)]
    results, sentences, verdicts = [], [METHOD], {}
    for log in LOGS:
        _, compared = compare_runs(epochs, points, log)
        ours = compared[compared["variant"] == NOTEBOOK_VARIANT] if len(compared) else compared
        sentences.append(log_sentence(log, ours))
        verdicts[log.name] = verdict(ours["worst_drop"], log.metrics()["worst_drop"])[0] if len(ours) else "too short"
        results.append((log, compared))
    if set(verdicts.values()) == {"too short"}:
        highest = epochs.loc[epochs["variant"] == NOTEBOOK_VARIANT, "train_acc"].max()
        return NotebookSection([], pd.DataFrame(), f"no bn_before run reaches the train accuracy of either log "
                               f"(highest {pct(highest)}): the study is too short", verdicts)  # fmt: skip
    limits = sorted(epochs["limit_train"].dropna().unique())
    if limits:  # the notebook trains on all 60,000 images
        sentences[0] += f" Our runs train on {join_words([f'{int(n):,}' for n in limits])} of {TRAIN_SIZE:,} images."
    return NotebookSection(sentences, comparison_table(results), None, verdicts)
