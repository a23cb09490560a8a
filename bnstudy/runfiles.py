"""Checking a run's files before anything trusts them: is a run done, and if its files are
not whole or do not agree with each other, why (RunStore.check uses it).

A run is done when its JSON parses, says complete or diverged, holds a config that gives
back the file's run_id, and its CSV has a run's columns, the run's own id on every row,
epochs 1..n, numbers where numbers belong, and as many rows as the JSON says. Torch-free;
reads only what it is given.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

from bnstudy.settings import CSV_COLUMNS, EVALS_COLUMNS, METRIC_COLUMNS, RunConfig, SettingError, csv_layout_ok
from bnstudy.variants import variant

DONE_STATUSES = ("complete", "diverged")
RUN_STATES = (*DONE_STATUSES, "failed", "damaged", "pending")  # what `RunStore.state` answers


@dataclasses.dataclass(frozen=True)
class RunCheck:
    """What a run's files on disk amount to (RunStore.check).

    state:    one of RUN_STATES. "complete"/"diverged": both files whole and in agreement;
              "failed": a readable JSON saying so; "pending": no JSON (never run, in flight,
              or killed before its JSON was moved into place); "damaged": anything else.
    reason:   why the run is not done, in a few words ("" when it is).
    metadata: the JSON's content, when it checks out; else None.
    config:   the RunConfig rebuilt from the JSON (its run_id is the file name); else None.
    rows:     a done run's epoch rows: dicts with CSV_COLUMNS keys, the metric columns as
              numbers (epoch an int, an empty BN-diagnostic cell NaN); else None.
    """

    state: str
    reason: str
    metadata: dict | None = None
    config: RunConfig | None = None
    rows: list[dict] | None = None


class Damage(Exception):
    """Why a run's files are not whole or do not agree with each other, in a few words."""


RUN_FILE_STATUSES = (*DONE_STATUSES, "failed")  # what a JSON's status may say
# Any number, NaN and infinity included: a diverged run's last epoch has them (and aggregate
# does not count an epoch with a non-finite loss).
LOSS_COLUMNS = ("train_loss", "test_loss")
DIAGNOSTIC_COLUMNS = ("test_acc_batch_stats", "test_acc_precise_bn")  # empty for `none`: it has no BN
ACCURACY_COLUMNS = ("train_acc", "test_acc", *DIAGNOSTIC_COLUMNS)
NUMBER_COLUMNS = [c for c in METRIC_COLUMNS if c != "epoch"]


def read_metadata(text: str, run_id: str) -> tuple[dict, RunConfig]:
    """(the JSON's content, its config as a RunConfig) from a run's JSON text; Damage unless
    it is an object with a known status, a done run's epochs_done, and a config that is a
    valid run whose id is `run_id`. Settings added since the file was written take their
    defaults, which keep old runs' ids."""
    try:
        metadata = json.loads(text)
    except ValueError:
        raise Damage("JSON does not parse") from None
    if not isinstance(metadata, dict) or metadata.get("status") not in RUN_FILE_STATUSES:
        raise Damage("JSON has no run status")
    if not isinstance(metadata.get("config"), dict):
        raise Damage("JSON has no config")
    try:
        config = RunConfig(**metadata["config"], study=metadata.get("study"))
    except (TypeError, SettingError) as exc:
        raise Damage(f"JSON config is not a valid run ({exc})") from None
    if config.run_id != run_id:
        raise Damage(f"JSON config is run {config.run_id}")
    epochs_done = metadata.get("epochs_done")
    if metadata["status"] != "failed" and (not isinstance(epochs_done, int) or isinstance(epochs_done, bool)):
        raise Damage("JSON has no epochs_done")
    return metadata, config


def read_rows(path: Path, metadata: dict, config: RunConfig) -> list[dict]:
    """A done run's CSV rows (RunCheck.rows), checked against its JSON: Damage unless the
    header is CSV_COLUMNS (or an older version's, settings.csv_layout_ok), every row is the run's (run_id) with epochs 1..n and numbers
    where numbers belong, and n is the JSON's epochs_done (for "complete" also the
    config's epochs; a diverged run stops early). One pass with the csv module."""
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
    rows = [read_row(header, line, epoch, config) for epoch, line in enumerate(lines, 1)]
    expected = metadata["epochs_done"]
    if metadata["status"] == "complete" and expected != config.epochs:
        raise Damage(f"complete after {expected} of {config.epochs} epochs")
    if not 1 <= len(rows) == expected <= config.epochs:
        raise Damage(f"CSV has {len(rows)} epochs, JSON says {expected} of {config.epochs}")
    return rows


def read_row(header: list[str], line: list[str], epoch: int, config: RunConfig) -> dict:
    """Row `epoch` (1-based) of a run's CSV as RunCheck.rows has it; Damage when it is not.
    A CSV written before a setting existed lacks its column: the row takes the config's value."""
    if len(line) != len(header):
        raise Damage(f"CSV row {epoch} has {len(line)} fields, not {len(header)}")
    row = {key: getattr(config, key) for key in CSV_COLUMNS if key not in header} | dict(zip(header, line))
    if row["run_id"] != config.run_id:
        raise Damage(f"CSV row {epoch} is run {row['run_id']}")
    if row["epoch"] != str(epoch):
        raise Damage(f"CSV row {epoch} says epoch {row['epoch']!r}")
    row["epoch"] = epoch
    for column in NUMBER_COLUMNS:
        row[column] = cell_number(row[column], column, variant(config.variant).has_bn)
    return row


def cell_number(text: str, column: str, has_bn: bool) -> float:
    """A metric cell's number. Damage unless it is one the schema allows there: any number
    for a loss, an empty cell exactly for the BN diagnostics of a run without BN, a
    fraction for an accuracy, a finite number for a timing."""
    if column in DIAGNOSTIC_COLUMNS and not has_bn:
        if text:
            raise Damage(f"CSV {column} {text!r} in a run without BN")
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise Damage(f"CSV {column} {text!r} is not a number") from None
    if column in LOSS_COLUMNS:
        return value
    if not math.isfinite(value) or (column in ACCURACY_COLUMNS and not 0 <= value <= 1):
        raise Damage(f"CSV {column} {text!r} is out of range")
    return value


def check_points(path: Path, metadata: dict, config: RunConfig) -> None:
    """Damage unless a run with evals_per_epoch k > 1 has its points file: the columns of
    settings.EVALS_COLUMNS and k rows per epoch the JSON says it finished, all of this run."""
    try:
        with open(path, newline="") as f:
            header, *lines = list(csv.reader(f)) or [[]]
    except FileNotFoundError:
        raise Damage("no points file (evals.csv)") from None
    except (OSError, ValueError, csv.Error) as exc:
        raise Damage(f"unreadable points file ({exc})") from None
    expected = metadata["epochs_done"] * config.evals_per_epoch
    if header != EVALS_COLUMNS or len(lines) != expected or any(line[:1] != [config.run_id] for line in lines):
        raise Damage(f"points file is not this run's {expected} points")
