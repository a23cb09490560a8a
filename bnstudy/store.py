"""The results layout on disk: atomic run files, completed-run detection, the study lock.

    <root>/runs/<run_id>.csv    one row per epoch, columns train.CSV_COLUMNS
    <root>/runs/<run_id>.json   config, status, times, device, versions (written last)
    <root>/spec.toml            the study spec as run (sweeps only)
    <root>/.lock                held (flock) by the one sweep writing <root>

    <root>/damaged/<run_id>.<time>.csv|.json   a damaged run's files, set aside by the sweep

A run is *done* when its files are whole and agree with each other (RunStore.check says
how it is checked). Both files are written to a temporary name and moved into place with
os.replace, CSV first, so a process killed at any moment leaves either a finished run or
nothing that counts as one (at worst a CSV without its JSON, or a temporary
`.<name>.*.tmp`, which the next sweep removes under the lock). Anything else that does not
check out (a CSV cut short, edited or copied from another run, a JSON without its CSV) is
*damaged*: no command trusts its numbers, and the sweep sets its files aside and redoes it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import fcntl
import functools
import io
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

import bnstudy
from bnstudy.errors import UserError
from bnstudy.spec import RunConfig, SettingError
from bnstudy.train import CSV_COLUMNS, METRIC_COLUMNS

DONE_STATUSES = ("complete", "diverged")
RUN_STATES = (*DONE_STATUSES, "failed", "damaged", "pending")  # what `RunStore.state` answers


def check_writable(path: Path) -> None:
    """UserError unless `path` is, or could be created as, a writable folder. Creates nothing."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{path}: cannot create a results folder there ({existing} is not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{path}: not writable ({existing} does not allow it)")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and os.replace,
    so readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@functools.cache
def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def rows_to_csv(rows: list[dict]) -> str:
    """CSV text with CSV_COLUMNS in order; None becomes an empty field; floats keep full precision."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS} for row in rows)
    return buffer.getvalue()


@functools.cache
def git_commit() -> str | None:
    """The checkout's commit (with "-dirty" when it has changes), or None outside git."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_name(device: torch.device) -> str:
    """A readable name of the device, e.g. "NVIDIA H100 80GB HBM3" or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_metadata(config: RunConfig, status: str, device: str, started: str, ended: str, error: str | None = None,
                 epochs_done: int = 0, group_size: int = 1) -> dict:  # fmt: skip
    """The content of a run's JSON file. `group_size`: how many runs trained together as one
    fused network (1: solo); the rows' timing columns are that whole group's."""
    return {
        "run_id": config.run_id,
        "study": config.study,
        "status": status,
        "config": config.identity(),
        "epochs_done": epochs_done,
        "error": error,
        "started": started,
        "ended": ended,
        "device": device,
        "group_size": group_size,
        "torch_version": torch.__version__,
        "bnstudy_version": bnstudy.__version__,
        "git_commit": git_commit(),
    }


# ---------------------------------------------------------------- checking a run's files
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
    header is CSV_COLUMNS, every row is the run's (run_id) with epochs 1..n and numbers
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
    if header != CSV_COLUMNS:
        raise Damage("CSV columns are not a run's")
    rows = [read_row(line, epoch, config) for epoch, line in enumerate(lines, 1)]
    expected = metadata["epochs_done"]
    if metadata["status"] == "complete" and expected != config.epochs:
        raise Damage(f"complete after {expected} of {config.epochs} epochs")
    if not 1 <= len(rows) == expected <= config.epochs:
        raise Damage(f"CSV has {len(rows)} epochs, JSON says {expected} of {config.epochs}")
    return rows


def read_row(line: list[str], epoch: int, config: RunConfig) -> dict:
    """Row `epoch` (1-based) of a run's CSV as RunCheck.rows has it; Damage when it is not."""
    if len(line) != len(CSV_COLUMNS):
        raise Damage(f"CSV row {epoch} has {len(line)} fields, not {len(CSV_COLUMNS)}")
    row = dict(zip(CSV_COLUMNS, line))
    if row["run_id"] != config.run_id:
        raise Damage(f"CSV row {epoch} is run {row['run_id']}")
    if row["epoch"] != str(epoch):
        raise Damage(f"CSV row {epoch} says epoch {row['epoch']!r}")
    row["epoch"] = epoch
    for column in NUMBER_COLUMNS:
        row[column] = cell_number(row[column], column, config.variant != "none")
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


# ---------------------------------------------------------------- the store
class RunStore:
    """The files of one results folder (a study's, or `bnstudy run`'s --out)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def csv_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.csv"

    def json_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.json"

    def check(self, run_id: str) -> RunCheck:
        """What the run's files amount to: its state, why it is not done, and what was read.
        Reads the JSON and, for a done status, the CSV, once each; writes nothing."""
        try:
            text = self.json_path(run_id).read_text()
        except FileNotFoundError:
            if self.csv_path(run_id).exists():
                return RunCheck("pending", "no JSON (in flight or killed)")
            return RunCheck("pending", "not run")
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8
            return RunCheck("damaged", f"unreadable JSON ({exc})")
        try:
            metadata, config = read_metadata(text, run_id)
        except Damage as exc:
            return RunCheck("damaged", str(exc))
        if metadata["status"] == "failed":
            return RunCheck("failed", "failed", metadata, config)
        try:
            rows = read_rows(self.csv_path(run_id), metadata, config)
        except Damage as exc:
            return RunCheck("damaged", str(exc), metadata, config)
        return RunCheck(metadata["status"], "", metadata, config, rows)

    def state(self, run_id: str) -> str:
        """One of RUN_STATES (see RunCheck); "failed", "damaged" and "pending" runs are what a sweep runs."""
        return self.check(run_id).state

    def is_done(self, run_id: str) -> bool:
        return self.state(run_id) in DONE_STATUSES

    def recorded_run_ids(self) -> set[str]:
        """The ids of every run with a JSON file here, whatever spec it came from."""
        return {path.stem for path in self.runs_dir.glob("*.json")}

    @property
    def spec_path(self) -> Path:
        return self.root / "spec.toml"

    def write_spec(self, text: str) -> Path:
        """Keep the study spec as run (the last sweep's) beside its runs."""
        atomic_write_text(self.spec_path, text)
        return self.spec_path

    def remove_stale_temps(self) -> int:
        """Delete temporary files left by a writer killed mid-write; returns how many.
        Call it holding the lock, so that no live writer's file goes."""
        stale = [*self.root.glob(".*.tmp"), *self.runs_dir.glob(".*.tmp")]
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return len(stale)

    @property
    def damaged_dir(self) -> Path:
        return self.root / "damaged"

    def set_aside_damaged(self, run_ids: Iterable[str]) -> list[tuple[str, str]]:
        """Move the files of each damaged run among `run_ids` into damaged_dir as
        <run_id>.<UTC time>.csv and .json (kept, never deleted: they may be worth a look),
        so that the run counts as pending. Returns (run_id, reason) of each run moved.
        UserError when a file cannot be moved. Call it holding the lock."""
        moved = []
        for run_id in run_ids:
            check = self.check(run_id)
            if check.state == "damaged":
                self._move_aside(run_id)
                moved.append((run_id, check.reason))
        return moved

    def _move_aside(self, run_id: str) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        try:
            self.damaged_dir.mkdir(exist_ok=True)
            # CSV first: killed in between, the JSON left alone is still damaged and moved next
            # time, whereas a CSV left alone would count as in flight and be overwritten.
            for path in (self.csv_path(run_id), self.json_path(run_id)):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, self.damaged_dir / f"{run_id}.{stamp}{path.suffix}")
        except OSError as exc:
            raise UserError(f"{self.damaged_dir}: cannot set damaged run {run_id} aside there ({exc.strerror})") from None

    def write_run(self, rows: list[dict], metadata: dict) -> tuple[Path, Path]:
        """Write the run's CSV, then its JSON (the JSON marks it done). Returns both paths."""
        run_id = metadata["run_id"]
        atomic_write_text(self.csv_path(run_id), rows_to_csv(rows))
        atomic_write_text(self.json_path(run_id), json.dumps(metadata, indent=2) + "\n")
        return self.csv_path(run_id), self.json_path(run_id)

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's lock for a sweep; UserError if another process holds it.

        flock is released by the kernel when its holder dies, even by SIGKILL, so a killed
        sweep never leaves a stale lock behind.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise UserError(f"{self.root}: another sweep is writing this study ({holder}); wait for it or stop it") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def format_status(configs: list[RunConfig], store: RunStore) -> str:
    """A table of the runs' states (RUN_STATES) per variant, with totals, for `bnstudy status`,
    then the damaged runs with their reasons (a few) and how many runs belong to other specs.
    "done" counts complete runs; diverged runs are results too and are not rerun."""
    checks = {config.run_id: store.check(config.run_id) for config in configs}
    counts: dict[str, dict[str, int]] = {}
    for config in configs:
        row = counts.setdefault(config.variant, dict.fromkeys(RUN_STATES, 0))
        row[checks[config.run_id].state] += 1
    counts["all"] = {state: sum(row[state] for row in counts.values()) for state in RUN_STATES}
    header = ["variant", *("done" if state == "complete" else state for state in RUN_STATES), "total"]
    table = [header] + [[variant, *map(str, row.values()), str(sum(row.values()))] for variant, row in counts.items()]
    width = max(len(line[0]) for line in table)
    lines = [f"{line[0]:<{width}}" + "".join(f"{cell:>10}" for cell in line[1:]) for line in table]
    damaged = [(run_id, check.reason) for run_id, check in checks.items() if check.state == "damaged"]
    if damaged:
        lines.append("damaged (not counted as done; the next sweep sets their files aside and redoes them):")
        lines += format_damaged(damaged)
    others = len(store.recorded_run_ids() - set(checks))
    if others:
        lines.append(f"({others} more runs in {store.runs_dir} belong to other specs)")
    return "\n".join(lines)


def format_set_aside(moved: list[tuple[str, str]], store: RunStore) -> str:
    """What the sweep says about the damaged runs it set aside (RunStore.set_aside_damaged)."""
    runs = "run" if len(moved) == 1 else "runs"
    return "\n".join([f"{len(moved)} damaged {runs} set aside in {store.damaged_dir}, to be redone:",
                      *format_damaged(moved)])  # fmt: skip


def format_damaged(damaged: list[tuple[str, str]], shown: int = 5) -> list[str]:
    """Indented lines "  <run_id>: <reason>" for the first `shown` (run_id, reason) pairs,
    then how many more there are."""
    lines = [f"  {run_id}: {reason}" for run_id, reason in damaged[:shown]]
    if len(damaged) > shown:
        lines.append(f"  ... and {len(damaged) - shown} more")
    return lines
