"""The results layout on disk: atomic run files, completed-run detection, the study lock.

    <root>/runs/<run_id>.csv        one row per epoch, columns settings.CSV_COLUMNS
    <root>/runs/<run_id>.evals.csv  (evals_per_epoch > 1) one row per point, settings.EVALS_COLUMNS
    <root>/runs/<run_id>.json       config, status, times, device, versions (written last)
    <root>/spec.toml                the study spec as run (sweeps only)
    <root>/.lock                    held (flock) by the one sweep writing <root>

A run is *done* when its JSON says "complete" or "diverged". Each file is written to a
temporary name and moved into place with os.replace, JSON last, so a process killed at
any moment leaves either a finished run or nothing that counts as one (at worst a
temporary `.<name>.*.tmp`, which the next sweep removes under the lock).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import functools
import io
import json
import os
import stat
import tempfile
from pathlib import Path

from bnstudy.errors import UserError
from bnstudy.settings import CSV_COLUMNS, EVALS_COLUMNS, RunConfig

DONE_STATUSES = ("complete", "diverged")
RUN_STATES = (*DONE_STATUSES, "failed", "pending")  # what `RunStore.state` answers
EVALS_FIELD = "evals"  # a run metadata's points (runner.run_metadata): written to <run_id>.evals.csv, not the JSON


def check_path(path: str | os.PathLike) -> Path:
    """`path` as a Path, or UserError when it cannot name a file here: a name in it longer
    than its file system allows, or a lookup that fails other than for its absence (a path
    too long, a loop of links, a folder that may not be searched). Reads; creates nothing."""
    path = Path(path)
    _check_name_lengths(path, _nearest_existing(path))
    return path


def check_writable(*folders: str | os.PathLike) -> None:
    """UserError unless each of `folders` is, or could be created as, a writable folder whose
    names its file system allows. Creates nothing. Commands check every folder they will
    write before they start, so that no training is lost to a bad --out."""
    for folder in folders:
        path = Path(folder)
        existing = _nearest_existing(path)
        _check_name_lengths(path, existing)
        if not existing.is_dir():
            where = "it" if existing == path.absolute() else existing
            raise UserError(f"{path}: cannot create a results folder there ({where} is not a folder)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"{path}: not writable ({existing} does not allow it)")


def _nearest_existing(path: Path) -> Path:
    """The absolute `path`, or its nearest ancestor that exists (where creating it would
    start; at worst "/"). UserError when a lookup fails other than for a missing name."""
    existing = path.absolute()
    while True:
        try:
            existing.stat()
            return existing
        except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: a file on the way; callers say so
            existing = existing.parent
        except OSError as exc:
            raise UserError(f"{path}: cannot use this path ({exc.strerror})") from None


def _check_name_lengths(path: Path, existing: Path) -> None:
    """UserError when a name that `path` adds below `existing` (absolute) is longer than the
    file system there allows. The lookup does not tell: it stops at the first missing
    folder, and only mkdir would fail, after the training."""
    limit = os.pathconf(existing, "PC_NAME_MAX")
    for name in path.absolute().parts[len(existing.parts) :]:
        size = len(os.fsencode(name))
        if size > limit:
            raise UserError(f"{path}: cannot use this path (a name of {size} bytes; the file system allows {limit})")


@contextlib.contextmanager
def writing(root: Path):
    """Turn an OSError raised while writing results in `root` (a full disk, a folder where a
    file goes) into the one-line UserError."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"{root}: cannot write results ({exc.strerror})") from None


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


def rows_to_csv(rows: list[dict], columns: list[str] = CSV_COLUMNS) -> str:
    """CSV text with `columns` in order; None becomes an empty field; floats keep full precision."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row[k] is None else row[k]) for k in columns} for row in rows)
    return buffer.getvalue()


class RunStore:
    """The files of one results folder (a study's, or `bnstudy run`'s --out)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def csv_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.csv"

    def json_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.json"

    def evals_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.evals.csv"

    def status(self, run_id: str) -> str | None:
        """The status its JSON records, or None when there is no readable JSON."""
        try:
            return json.loads(self.json_path(run_id).read_text())["status"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def is_done(self, run_id: str) -> bool:
        return self.state(run_id) in DONE_STATUSES

    def state(self, run_id: str) -> str:
        """One of RUN_STATES: a done run's status, "failed", or "pending" (never run, killed,
        or its files are incomplete); "pending" and "failed" runs are what a sweep runs."""
        status = self.status(run_id)
        if status in DONE_STATUSES:
            return status if self.csv_path(run_id).is_file() else "pending"
        return "failed" if status == "failed" else "pending"

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

    def write_run(self, rows: list[dict], metadata: dict) -> tuple[Path, Path]:
        """Write the run's CSV, then its points when `metadata` carries them (EVALS_FIELD),
        then its JSON, without them (the JSON marks the run done). Returns the CSV's and
        the JSON's paths."""
        run_id = metadata["run_id"]
        atomic_write_text(self.csv_path(run_id), rows_to_csv(rows))
        if EVALS_FIELD in metadata:
            atomic_write_text(self.evals_path(run_id), rows_to_csv(metadata[EVALS_FIELD], EVALS_COLUMNS))
        record = {key: value for key, value in metadata.items() if key != EVALS_FIELD}
        atomic_write_text(self.json_path(run_id), json.dumps(record, indent=2) + "\n")
        return self.csv_path(run_id), self.json_path(run_id)

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's lock for a sweep (creating the folder and its `.lock`); UserError
        if another process holds it, or `.lock` is not a plain file of its own.

        flock is released by the kernel when its holder dies, even by SIGKILL, so a killed
        sweep never leaves a stale lock behind.
        """
        with writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        with open(_open_lock(self.root / ".lock"), "r+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = handle.read().strip() or "another process"
                raise UserError(f"{self.root}: another sweep is writing this study ({holder}); wait for it or stop it") from None
            handle.truncate(0)
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file `path`, created when missing, for reading and writing.
    The sweep truncates and writes it, so it must be this folder's own file: never followed
    through a symbolic link (O_NOFOLLOW), and refused when it is not a regular file or has
    other names (a hard link). UserError naming it otherwise."""
    try:
        # 0o666 as for every result file; the kernel takes the umask off.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        problem = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise _lock_error(path, problem) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        kind = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a regular file"
        raise _lock_error(path, f"it is {kind}")
    return fd


def _lock_error(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: cannot use it as the study's lock ({problem}); remove it, the sweep makes its own")


def format_status(configs: list[RunConfig], store: RunStore) -> str:
    """A table of the runs' states (RUN_STATES) per variant, with totals, for `bnstudy status`.
    "done" counts complete runs; diverged runs are results too and are not rerun."""
    counts: dict[str, dict[str, int]] = {}
    for config in configs:
        row = counts.setdefault(config.variant, dict.fromkeys(RUN_STATES, 0))
        row[store.state(config.run_id)] += 1
    counts["all"] = {state: sum(row[state] for row in counts.values()) for state in RUN_STATES}
    header = ["variant", "done", "diverged", "failed", "pending", "total"]
    table = [header] + [[variant, *map(str, row.values()), str(sum(row.values()))] for variant, row in counts.items()]
    width = max(len(line[0]) for line in table)
    lines = [f"{line[0]:<{width}}" + "".join(f"{cell:>10}" for cell in line[1:]) for line in table]
    others = len(store.recorded_run_ids() - {config.run_id for config in configs})
    if others:
        lines.append(f"({others} more runs in {store.runs_dir} belong to other specs)")
    return "\n".join(lines)
