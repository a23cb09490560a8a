"""Checking a run's files before anything trusts them: is a run done, and if its files are
not whole or do not agree with each other, why (RunStore.check uses it).

A run is done when its JSON parses, every field of it has its type (`JSON_FIELDS`), its
config gives back the file's run_id (or its legacy_run_id: files written before the run_id
grew), and its CSV has a run's columns, the file's run_id and the config on every row,
epochs 1..n, numbers in their ranges where numbers belong (accuracies in [0, 1], losses and
times non-negative), every epoch finite but a diverged run's last, whose training loss is
not, and as many rows as the JSON says; a run with points has each of them, its own, at its
epoch, point and step, the epoch's last equal to its row. Torch-free; reads only what it is
given. Also the types of a run's result: its status (RunStatus, as the JSON writes it), its
state on disk (RunState), the result itself as it travels from training to its files
(RunOutcome); and how those states are shown (format_status, format_damaged), which
store.py passes on.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import enum
import json
import math
from pathlib import Path

from bnstudy.config.settings import (BY_NAME, CSV_COLUMNS, EVALS_COLUMNS, IDENTITY_COLUMNS, METRIC_COLUMNS, RunConfig,
                              SettingError, csv_layout_ok, steps_per_epoch)  # fmt: skip

class RunStatus(enum.StrEnum):
    """A run's status as its JSON writes it (the member's value is the JSON's text)."""

    COMPLETE = "complete"  # every epoch of the config trained
    DIVERGED = "diverged"  # stopped at the epoch whose training loss turned non-finite: a result too
    FAILED = "failed"  # an exception, or a result the driver refused (its JSON says why, under "error")

    @classmethod
    def of(cls, value) -> RunStatus | None:
        """The status `value` (a JSON's, a worker's: anything) names, or None."""
        try:
            return cls(value)
        except ValueError:
            return None

    @property
    def state(self) -> RunState:
        """The state of a run whose JSON says this status and whose files check out."""
        return RunState(self.value)


class RunState(enum.StrEnum):
    """What a run's files on disk amount to (RunStore.check); `bnstudy status` counts these."""

    COMPLETE = "complete"  # both files whole and in agreement, as RunStatus.COMPLETE ...
    DIVERGED = "diverged"  # ... and RunStatus.DIVERGED
    FAILED = "failed"  # a readable JSON saying so
    DAMAGED = "damaged"  # anything else that is there: no command trusts it; a sweep sets it aside
    PENDING = "pending"  # no JSON: never run, in flight, or killed before its JSON was moved into place

    def is_done(self) -> bool:
        """Whether the run is a result: reported, and not run again (a diverged run too)."""
        return self in (RunState.COMPLETE, RunState.DIVERGED)


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """One run's result: what runner.execute returns, what crosses from the worker that
    trained it to the driver, what the sweep vets (driver.result_problem) and what
    RunStore.write_run writes.

    rows:     one dict per finished epoch, CSV_COLUMNS keys: <run_id>.csv.
    metadata: the content of <run_id>.json (runner.run_metadata), its "status" included.
    points:   with evals_per_epoch k > 1, k dicts per finished epoch, EVALS_COLUMNS keys:
              <run_id>.evals.csv; else empty.
    """

    rows: list[dict]
    metadata: dict
    points: list[dict] = dataclasses.field(default_factory=list)

    @property
    def status(self) -> RunStatus:
        """The run's status, read from its metadata (one copy, which the JSON writes)."""
        return RunStatus(self.metadata["status"])

    @property
    def measures_points(self) -> bool:
        """Whether the run's config asks for points (evals_per_epoch > 1): then it has a
        points file, if only a header (a run that failed before its first point)."""
        return self.metadata["config"]["evals_per_epoch"] > 1


@dataclasses.dataclass(frozen=True)
class RunCheck:
    """What a run's files on disk amount to (RunStore.check).

    state:    its RunState.
    reason:   why the run is not done, in a few words ("" when it is).
    metadata: the JSON's content, when it checks out; else None.
    config:   the RunConfig rebuilt from the JSON (its run_id or legacy_run_id is the file
              name); else None.
    rows:     a done run's epoch rows: dicts with CSV_COLUMNS keys, the metric columns as
              numbers (epoch an int, an empty BN-diagnostic cell NaN); else None.
    """

    state: RunState
    reason: str
    metadata: dict | None = None
    config: RunConfig | None = None
    rows: list[dict] | None = None


class Damage(Exception):
    """Why a run's files are not whole or do not agree with each other, in a few words."""


# Losses: non-negative; NaN or infinity only in a diverged run's last epoch, whose training
# loss turned non-finite (train.record: what stops a run), and which aggregate does not count.
LOSS_COLUMNS = ("train_loss", "test_loss")
DIAGNOSTIC_COLUMNS = ("test_acc_batch_stats", "test_acc_precise_bn")  # empty for `none`: it has no BN
ACCURACY_COLUMNS = ("train_acc", "test_acc", *DIAGNOSTIC_COLUMNS)
NUMBER_COLUMNS = [c for c in METRIC_COLUMNS if c != "epoch"]


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _time(value) -> bool:
    try:
        return isinstance(value, str) and datetime.datetime.fromisoformat(value) is not None
    except ValueError:
        return False


# A run JSON's fields (runner.run_metadata; bnstudy 0.1 wrote the same) and what each must be.
JSON_FIELDS = {
    "run_id": lambda v: isinstance(v, str),
    "study": lambda v: isinstance(v, str),
    "epochs_done": lambda v: _int(v) and v >= 0,
    "started": _time,
    "ended": _time,
    "device": lambda v: isinstance(v, str) and v != "",
    "group_size": lambda v: _int(v) and v >= 1,
    "torch_version": lambda v: isinstance(v, str),
    "bnstudy_version": lambda v: isinstance(v, str),
    "git_commit": lambda v: v is None or isinstance(v, str),
}


def read_metadata(text: str, run_id: str) -> tuple[dict, RunConfig]:
    """(the JSON's content, its config as a RunConfig) from a run's JSON text; Damage unless
    it is an object with a known status, each of JSON_FIELDS of its type, no error but for a
    failed run (a string, or none), and a config that is a valid run whose id (or legacy
    id, settings.RunConfig.legacy_run_id) is `run_id`, which the JSON names too. Settings
    added since the file was written take their defaults, which keep old runs' ids."""
    try:
        metadata = json.loads(text)
    except ValueError:
        raise Damage("JSON does not parse") from None
    if not isinstance(metadata, dict) or RunStatus.of(metadata.get("status")) is None:
        raise Damage("JSON has no run status")
    if not isinstance(metadata.get("config"), dict):
        raise Damage("JSON has no config")
    try:
        config = RunConfig(**metadata["config"], study=metadata.get("study"))
    except (TypeError, SettingError) as exc:
        raise Damage(f"JSON config is not a valid run ({exc})") from None
    if run_id not in (config.run_id, config.legacy_run_id):
        raise Damage(f"JSON config is run {config.run_id}")
    if "epochs_done" not in metadata or not JSON_FIELDS["epochs_done"](metadata["epochs_done"]):
        raise Damage("JSON has no epochs_done")
    for field, valid in JSON_FIELDS.items():
        if field not in metadata or not valid(metadata[field]):
            raise Damage(f"JSON {field} {ascii(metadata.get(field))[:60]} is not a run's")
    if metadata["run_id"] != run_id:
        raise Damage(f"JSON run_id {ascii(metadata['run_id'])[:60]} is not the file's")
    error, failed = metadata.get("error"), RunStatus(metadata["status"]) is RunStatus.FAILED
    if not (error is None or failed and isinstance(error, str)):
        raise Damage(f"JSON error {ascii(error)[:60]} for a {metadata['status']} run")
    return metadata, config


def read_rows(path: Path, metadata: dict, config: RunConfig) -> list[dict]:
    """A done run's CSV rows (RunCheck.rows), checked against its JSON: Damage unless the
    header is CSV_COLUMNS (or an older version's, settings.csv_layout_ok), every row is the
    run's (the JSON's run_id, which read_metadata checked, and its config) with epochs 1..n
    and numbers where numbers belong, every epoch finite but a diverged run's last
    (`check_finite`), and n is the JSON's epochs_done (for "complete" also the config's
    epochs; a diverged run stops early). One pass with the csv module."""
    try:
        with open(path, newline="") as f:
            table = list(csv.reader(f))
    except FileNotFoundError:
        raise Damage("no CSV") from None
    except (OSError, ValueError, csv.Error) as exc:  # ValueError: not UTF-8
        raise Damage(f"unreadable CSV ({exc})") from None
    if not table:
        raise Damage("empty CSV")
    header, *lines = table
    if not csv_layout_ok(header):
        raise Damage("CSV columns are not a run's")
    rows = [read_row(header, line, epoch, metadata["run_id"], config) for epoch, line in enumerate(lines, 1)]
    expected = metadata["epochs_done"]
    status = RunStatus(metadata["status"])
    if status is RunStatus.COMPLETE and expected != config.epochs:
        raise Damage(f"complete after {expected} of {config.epochs} epochs")
    if not 1 <= len(rows) == expected <= config.epochs:
        raise Damage(f"CSV has {len(rows)} epochs, JSON says {expected} of {config.epochs}")
    check_finite(rows, status)
    return rows


def read_row(header: list[str], line: list[str], epoch: int, run_id: str, config: RunConfig) -> dict:
    """Row `epoch` (1-based) of run `run_id`'s CSV as RunCheck.rows has it; Damage when it is
    not. A CSV written before a setting existed lacks its column: the row takes the config's value."""
    if len(line) != len(header):
        raise Damage(f"CSV row {epoch} has {len(line)} fields, not {len(header)}")
    row = {key: getattr(config, key) for key in CSV_COLUMNS if key not in header} | dict(zip(header, line))
    if row["run_id"] != run_id:
        raise Damage(f"CSV row {epoch} is run {_shown(row['run_id'])}")
    for column in IDENTITY_COLUMNS[1:]:
        if column in header and not _same_setting(column, row[column], getattr(config, column)):
            raise Damage(f"CSV row {epoch} has {column} {ascii(row[column])[:60]}, "
                         f"its JSON {getattr(config, column)!r}")
    if row["epoch"] != str(epoch):
        raise Damage(f"CSV row {epoch} says epoch {row['epoch']!r}")
    row["epoch"] = epoch
    for column in NUMBER_COLUMNS:
        row[column] = cell_number(row[column], column, config.keeps_running_stats)
    return row


def _shown(text: str, limit: int = 80) -> str:
    """`text` for a reason: as it is when printable and short, else escaped and cut."""
    return text if text.isprintable() and len(text) <= limit else ascii(text)[:limit]


def _same_setting(column: str, text: str, value) -> bool:
    """Whether a CSV identity cell holds the config's `value` of that setting."""
    kind = BY_NAME[column].kind
    try:
        return (text if kind is str else kind(text)) == value
    except ValueError:
        return False


def cell_number(text: str, column: str, has_bn: bool) -> float:
    """A metric cell's number. Damage unless it is one the schema allows there: a
    non-negative number or NaN or infinity for a loss (check_finite says where those may
    be), an empty cell exactly for the BN diagnostics of a run without BN, a fraction for an
    accuracy, a finite non-negative number for a timing."""
    if column in DIAGNOSTIC_COLUMNS and not has_bn:
        if text:
            raise Damage(f"CSV {column} {ascii(text)[:60]} in a run without BN")
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise Damage(f"CSV {column} {ascii(text)[:60]} is not a number") from None
    if column in LOSS_COLUMNS and not value < 0:
        return value
    if not math.isfinite(value) or value < 0 or (column in ACCURACY_COLUMNS and value > 1):
        raise Damage(f"CSV {column} {text!r} is out of range")
    return value


def check_finite(rows: list[dict], status: RunStatus) -> None:
    """Damage unless every epoch's losses are finite, but for a diverged run's last epoch,
    whose training loss must not be (what made it diverged)."""
    for row in rows[:-1] if status is RunStatus.DIVERGED else rows:
        for column in LOSS_COLUMNS:
            if not math.isfinite(row[column]):
                raise Damage(f"CSV {column} {row[column]} in epoch {row['epoch']} of a {status} run")
    if status is RunStatus.DIVERGED and math.isfinite(rows[-1]["train_loss"]):
        raise Damage(f"a diverged run whose last epoch has a finite train_loss ({rows[-1]['train_loss']})")


def check_points(path: Path, metadata: dict, config: RunConfig, rows: list[dict]) -> None:
    """Damage unless a run with evals_per_epoch k > 1 has its points file: the columns of
    settings.EVALS_COLUMNS and exactly k rows per epoch the JSON says it finished, each this
    run's (the JSON's run_id), at its epoch, point j, step (after round(j·S/k) of the epoch's S steps: train's
    point_steps) and epoch fraction, with accuracies in [0, 1] (PreciseBN's empty without
    BN), the k-th of each epoch equal to its CSV row (`rows`, read_rows')."""
    try:
        with open(path, newline="") as f:
            header, *lines = list(csv.reader(f)) or [[]]
    except FileNotFoundError:
        raise Damage("no points file (evals.csv)") from None
    except (OSError, ValueError, csv.Error) as exc:
        raise Damage(f"unreadable points file ({exc})") from None
    k, steps = config.evals_per_epoch, steps_per_epoch(config.train_size, config.batch_size)
    expected = metadata["epochs_done"] * k
    if header != EVALS_COLUMNS or len(lines) != expected:
        raise Damage(f"points file is not this run's {expected} points")
    has_bn = config.keeps_running_stats  # a run whose layers keep no running statistics has no BN diagnostics
    for i, line in enumerate(lines):
        epoch, point = divmod(i, k)
        step = round((point + 1) * steps / k)
        where = [metadata["run_id"], str(epoch + 1), str(point + 1), str(epoch * steps + step)]
        if len(line) != len(EVALS_COLUMNS) or line[:4] != where or not _number_is(line[4], epoch + step / steps):
            raise Damage(f"points file row {i + 1} is not this run's point {point + 1} of epoch {epoch + 1}")
        accuracies = [_accuracy(text, f"points file row {i + 1}") for text in line[5:7] if text or has_bn]
        if len(accuracies) != (2 if has_bn else 1):
            kind = "with" if has_bn else "without"
            raise Damage(f"points file row {i + 1} has not the accuracies of a run {kind} BN")
        row = rows[epoch]
        if point + 1 == k and accuracies != [row["test_acc"], *([row["test_acc_precise_bn"]] if has_bn else [])]:
            raise Damage(f"points file's last point of epoch {epoch + 1} is not its CSV row")


def _number_is(text: str, value: float) -> bool:
    try:
        return float(text) == value
    except ValueError:
        return False


def _accuracy(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Damage(f"{where}: accuracy {ascii(text)[:60]} is not a number") from None
    if not 0 <= value <= 1:
        raise Damage(f"{where}: accuracy {text!r} is out of range")
    return value


# ---------------------------------------------------------------- states shown (a store: store.RunStore)
def format_status(configs: list[RunConfig], store) -> str:
    """A table of the runs' states (RunState) per variant, with totals, for `bnstudy status`,
    then the damaged runs with their reasons (a few) and how many runs belong to other specs.
    "done" counts complete runs; diverged runs are results too and are not rerun. UserError
    when a folder of the study is a link (check_no_links)."""
    from bnstudy.results.store import check_no_links  # (store imports this module)

    check_no_links(store.root)
    located = [store.locate(config) for config in configs]  # (the id its files are under, their check)
    counts: dict[str, dict[RunState, int]] = {}
    for config, (_, check) in zip(configs, located):
        row = counts.setdefault(config.variant, dict.fromkeys(RunState, 0))
        row[check.state] += 1
    counts["all"] = {state: sum(row[state] for row in counts.values()) for state in RunState}
    header = ["variant", *("done" if state is RunState.COMPLETE else state for state in RunState), "total"]
    table = [header] + [[variant, *map(str, row.values()), str(sum(row.values()))] for variant, row in counts.items()]
    width = max(len(line[0]) for line in table)
    lines = [f"{line[0]:<{width}}" + "".join(f"{cell:>10}" for cell in line[1:]) for line in table]
    damaged = [(run_id, check.reason) for run_id, check in located if check.state is RunState.DAMAGED]
    if damaged:
        lines.append("damaged (not counted as done; the next sweep sets their files aside and redoes them):")
        lines += format_damaged(damaged)
    others = len(store.recorded_run_ids() - {run_id for run_id, _ in located})
    if others:
        lines.append(f"({others} more runs in {store.runs_dir} belong to other specs)")
    return "\n".join(lines)


def format_set_aside(moved: list[tuple[str, str]], store) -> str:
    """What the sweep says about the runs it set aside (RunStore.set_aside_unusable): (run_id, why)."""
    runs = "run" if len(moved) == 1 else "runs"
    return "\n".join([f"{len(moved)} {runs} set aside in {store.damaged_dir}, to be redone:",
                      *format_damaged(moved)])  # fmt: skip


def format_damaged(damaged: list[tuple[str, str]], shown: int = 5) -> list[str]:
    """Indented lines "  <run_id>: <reason>" for the first `shown` (run_id, reason) pairs,
    then how many more there are."""
    lines = [f"  {run_id}: {reason}" for run_id, reason in damaged[:shown]]
    if len(damaged) > shown:
        lines.append(f"  ... and {len(damaged) - shown} more")
    return lines
