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

from bnstudy.aggregate import EVAL_MODES, POINT_CURVES, curve_metrics
from bnstudy.settings import BY_NAME, TRAIN_SIZE
from bnstudy.variants import VARIANTS
from bnstudy.wording import join_words, pct, plural, pp

WINDOW = 5  # epochs, as in each log
TOLERANCE = 0.005  # how close to a log's last train accuracy a run must get to reach it
NOTEBOOK_VARIANT = "bn_before"
NOTEBOOK_SETTING = {"optimizer": "adam", "lr": 1e-3, "batch_size": 256,
                    "activation": BY_NAME["activation"].default, "bn_momentum": BY_NAME["bn_momentum"].default}  # fmt: skip


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
    return long.dropna(subset=["accuracy"]).assign(accuracy=lambda f: 100 * f["accuracy"].astype(float),
                                                   statistics=lambda f: f["statistics"].map(EVAL_MODES))[columns]  # fmt: skip


# ---------------------------------------------------------------- words
def verdict(ours: pd.Series, theirs: float) -> tuple[str, str]:
    """("reproduces" | "partly" | "not", why in words) for our seeds' worst drops `ours`
    against the log's worst drop `theirs` (see the module's docstring)."""
    seeds = plural(len(ours), "seed")
    if theirs <= ours.max():
        where = "lies within" if theirs >= ours.min() else "is below"
        return "reproduces", f"the log's worst drop of {pp(theirs)} {where} the range of our {seeds} ({span(ours, pp)})"
    if ours.max() > 0:
        drop = "drops" if len(ours) == 1 else "drop"
        return "partly", f"our {seeds} {drop}, but at most {pp(ours.max())}, less than the log's {pp(theirs)}"
    return "not", f"none of our {seeds} drops in its window; the log's worst drop is {pp(theirs)}"


def span(values: pd.Series, fmt) -> str:
    """ "3.0 to 20.4 pp" (with fmt=pp), or one value when they agree."""
    low, high = fmt(values.min()), fmt(values.max())
    return low if low == high else f"{low.removesuffix(' pp').removesuffix('%')} to {high}"


def seed_range(values: pd.Series, fmt=pp) -> str:
    """ "12.1 pp (seeds: 3.0 to 20.4 pp)": the mean over seeds and their range ("(every seed)" when they agree)."""
    agree = fmt(values.min()) == fmt(values.max())
    return fmt(values.mean()) + ("" if len(values) == 1 else " (every seed)" if agree else f" (seeds: {span(values, fmt)})")


def reach_text(variant: str, windows: pd.DataFrame) -> str:
    """How many of a variant's runs reach the log, and where their windows lie and how well
    their train accuracy matches, or how far the others got."""
    reached, runs = windows[windows["reached"]], plural(len(windows), "run")
    if reached.empty:
        return f"{variant}: 0 of {runs} (highest train accuracy {pct(windows['highest_train'].max())})"
    where = join_words([f"{s}–{s + WINDOW - 1}" for s in sorted(set(reached["start"].astype(int)))])
    return (f"{variant}: {len(reached)} of {runs} (window epochs {where}; train accuracy off by "
            f"{seed_range(reached['mismatch'])} RMS)")  # fmt: skip


def log_text(log: NotebookLog) -> str:
    """The log's numbers, said to be the notebook's."""
    m = log.metrics()
    return (f"Log {log.name} (train accuracy {pct(log.train_first)} in its first epoch, {pct(log.train_last)} in its "
            f"last; test accuracy {', '.join(f'{100 * a:.1f}' for a in log.test_acc)}%: worst drop "
            f"{pp(m['worst_drop'])}, mean |change| {pp(m['mean_abs_change'])}, lowest {pct(m['lowest_acc'])}; the "
            f"notebook's numbers, not this study's).")  # fmt: skip


def ours_text(ours: pd.DataFrame) -> str:
    """bn_before's stability in its windows: epoch ends, PreciseBN and, where there is one,
    the fine curve, as mean over seeds and range."""
    text = (f"In their windows bn_before's runs have, at the epoch ends (the log's sampling), worst drop "
            f"{seed_range(ours['worst_drop'])}, mean |change| {seed_range(ours['mean_abs_change'])} and lowest test "
            f"accuracy {seed_range(ours['lowest_acc'], pct)}; with PreciseBN statistics worst drop "
            f"{seed_range(ours['worst_drop_precise_bn'])}")  # fmt: skip
    fine = ours.dropna(subset=["fine_worst_drop"])
    if fine.empty:
        return text + " (no finer curve: the runs evaluate once an epoch)."
    return (text + f"; at every point of the fine curve ({plural(len(fine), 'run')}), worst drop "
            f"{seed_range(fine['fine_worst_drop'])} and lowest {seed_range(fine['fine_lowest_acc'], pct)}, with "
            f"PreciseBN worst drop {seed_range(fine['fine_worst_drop_precise_bn'])}.")  # fmt: skip


def log_sentences(log: NotebookLog, windows: pd.DataFrame, compared: pd.DataFrame) -> list[str]:
    """The sentences on one log: its numbers, which runs reach it, and unless none of
    bn_before's does, bn_before's stability there, the verdict and the other variants'."""
    by_variant = dict(tuple(windows.groupby("variant", sort=False)))
    reach = "; ".join(reach_text(v, w) for v, w in by_variant.items())
    sentences = [log_text(log), f"Runs that reach its train accuracy (within {pp(TOLERANCE)}): {reach}."]
    ours = compared[compared["variant"] == NOTEBOOK_VARIANT] if len(compared) else compared
    if ours.empty:
        return sentences + [f"No bn_before run gets that far, so this study is too short to reach log {log.name}'s "
                            f"window: no comparison."]  # fmt: skip
    theirs, fine = log.metrics()["worst_drop"], ours["fine_worst_drop"].dropna()
    word, why = verdict(ours["worst_drop"], theirs)
    text = f"Verdict for log {log.name}: {word} ({why})"
    if len(fine):  # swings between the epoch ends, which the log could not have shown
        text += "; on the fine curve (every point): {} ({})".format(*verdict(fine, theirs))
    sentences += [ours_text(ours), text + (". Too few seeds to say how often it happens." if len(ours) < 3 else ".")]
    others = compared[compared["variant"] != NOTEBOOK_VARIANT].groupby("variant", sort=False)
    contrast = [f"{seed_range(runs['worst_drop'])} for {variant}" for variant, runs in others]
    if contrast:
        sentences.append(f"At the same training progress the worst drop at the epoch ends is {join_words(contrast)}.")
    return sentences


def differences_from_notebook(epochs: pd.DataFrame) -> list[str]:
    """What our runs at the notebook's setting do differently from its training on all
    60,000 images: sentences, none when nothing."""
    limits = [f"{int(n):,}" for n in sorted(epochs["limit_train"].dropna().unique())]
    return [f"Our runs train on {join_words(limits)} images instead of {TRAIN_SIZE:,}."] if limits else []


# ---------------------------------------------------------------- the report's section
TABLE_COLUMNS = {  # window metric: its column in the report, saying which curve it is from
    "train_first": "train acc, first epoch (%)", "train_last": "train acc, last epoch (%)",
    "worst_drop": "worst drop, epoch ends (pp)", "mean_abs_change": "mean abs change, epoch ends (pp)",
    "lowest_acc": "lowest acc, epoch ends (%)", "late_std": "late std, epoch ends (pp)",
    "gen_gap": "gen gap, last epoch (pp)", "worst_drop_precise_bn": "PreciseBN worst drop, epoch ends (pp)",
    "fine_worst_drop": "worst drop, every point (pp)", "fine_lowest_acc": "lowest acc, every point (%)",
    "fine_worst_drop_precise_bn": "PreciseBN worst drop, every point (pp)",
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


def notebook_comparison(epochs: pd.DataFrame, points: pd.DataFrame) -> tuple[list[str], pd.DataFrame] | None:
    """The report's section on the notebook's logs: (sentences, comparison_table), or None
    when the study has no bn_before run at the notebook's setting. `epochs`: counted rows;
    `points`: the study's fine curves (StudyResults.points)."""
    if not has_notebook_cell(epochs):
        return None
    epochs = epochs[in_notebook_setting(epochs)]
    sentences = [f"The notebook's logs do not start from a fresh network (log A's first epoch already has train "
                 f"accuracy {pct(LOGS[0].train_first)}), so each of our runs at its setting (Adam, learning rate "
                 f"0.001, batch size 256, sigmoid, BN momentum 0.1) is compared over its own window: the {WINDOW} "
                 f"consecutive epochs whose train accuracy in the first and last of them is closest (root mean "
                 f"square) to the log's."] + differences_from_notebook(epochs)  # fmt: skip
    results = []
    for log in LOGS:
        windows, compared = compare_runs(epochs, points, log)
        sentences += log_sentences(log, windows, compared)
        results.append((log, compared))
    return sentences, comparison_table(results)
