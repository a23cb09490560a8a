"""The results layout on disk: atomic run files, completed-run detection, the study lock.

    <root>/runs/<run_id>.csv        one row per epoch, columns settings.CSV_COLUMNS
    <root>/runs/<run_id>.evals.csv  (evals_per_epoch > 1) one row per point, settings.EVALS_COLUMNS
    <root>/runs/<run_id>.json       config, status, times, device, versions (written last)
    <root>/spec.toml                the study spec as run (sweeps only)
    <root>/.lock                    held (flock) by the one sweep writing <root>

    <root>/damaged/<run_id>.<time>.csv|.json   a damaged run's files, set aside by the sweep

A run is *done* when its files are whole and agree with each other (RunStore.check). Each
file is written to a temporary name and moved into place with os.replace, JSON last, so a
process killed at any moment leaves a finished run or nothing that counts as one (at worst a
CSV without its JSON, or a `.<name>.*.tmp`, which the next sweep removes under the lock).
Anything else (a CSV cut short, edited or copied from another run, a JSON without its CSV)
is *damaged*: no command trusts its numbers; the sweep sets its files aside and redoes it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import errno
import fcntl
import functools
import io
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bnstudy.errors import UserError
from bnstudy.results.runfiles import (Damage, RunCheck, RunOutcome, RunState, RunStatus, check_points, read_metadata,
                              read_rows)  # fmt: skip
# for cli, sweep and report:
from bnstudy.results.runfiles import format_damaged, format_set_aside, format_status  # noqa: F401
from bnstudy.config.settings import CSV_COLUMNS, EVALS_COLUMNS, RunConfig


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


# The folders of a study folder that bnstudy writes in (.reports: the report's versions, bnstudy.report.publish).
STUDY_FOLDERS = ("runs", "damaged", "figures", ".reports")


def check_no_links(root: str | os.PathLike) -> None:
    """UserError when one of the study folder `root`'s STUDY_FOLDERS is a symbolic link:
    commands write, move and delete in them, never through a link into another folder.
    `sweep` (dry runs too), `status`, `report` and the store's writes call it. (The report's
    own links are files: each published name, and figures/'s figures, in a folder of its own.)"""
    for name in STUDY_FOLDERS:
        path = Path(root) / name
        if path.is_symlink():
            raise UserError(f"{path}: a symbolic link; a study's runs/, damaged/, figures/ and .reports/ must be "
                            "its own folders (bnstudy writes, moves and deletes in them, never through a link)")


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
    so readers see the old file or the whole new one, never a part; then fsync the folder,
    so that the new name survives a power cut as well as the content (the rename lives in
    the folder, which the file's own fsync does not write)."""
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
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Flush `folder`'s entries (names made, replaced or removed in it) to its disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def unusable(config: RunConfig, run_id: str, check: RunCheck) -> str | None:
    """Why a sweep sets aside the files of planned run `config`, found under `run_id` with
    `check`, before it runs, or None to keep them: they are damaged; or the run is not done
    and they are under the 6-digit id of bnstudy 0.2 and before: redone, it goes under its
    own run_id, and they would stay behind as another spec's run."""
    if check.state is RunState.DAMAGED:
        return check.reason
    if run_id != config.run_id and not check.state.is_done():
        return f"{check.reason}, under its 6-digit id of bnstudy 0.2 and before; redone under its own"
    return None


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

    def evals_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.evals.csv"

    def run_id_of(self, config: RunConfig) -> str:
        """The id that `config`'s files are under here: its run_id, or its legacy_run_id when
        only that has files and they are not another config's (`_legacy_check`). Every
        lookup of a planned run goes through it (check, set_aside_unusable, the status
        table, the report's grid), so a run written before the run_id grew keeps its id."""
        return config.legacy_run_id if self._legacy_check(config) is not None else config.run_id

    def _legacy_check(self, config: RunConfig) -> RunCheck | None:
        """The check of `config`'s files under its legacy_run_id, or None when they are not
        its files: it has files under its run_id (new runs go there), none under the legacy
        id, or a JSON there whose config is another's (two configs share a short hash; one
        whose JSON does not read is taken as this config's, and so damaged)."""
        if self._has_files(config.run_id) or not self._has_files(config.legacy_run_id):
            return None
        check = self._check(config.legacy_run_id)
        return check if check.config is None or check.config.identity() == config.identity() else None

    def _has_files(self, run_id: str) -> bool:
        return self.json_path(run_id).exists() or self.csv_path(run_id).exists()

    def check(self, run: str | RunConfig) -> RunCheck:
        """What the files of `run` (a run_id, or the RunConfig a plan expects: `locate`'s
        check) amount to: its state, why it is not done, and what was read."""
        return self._check(run) if not isinstance(run, RunConfig) else self.locate(run)[1]

    def locate(self, config: RunConfig) -> tuple[str, RunCheck]:
        """(run_id_of(config), the check of the files under it), from one read of each file:
        the JSON and, for a done status, the CSV. Files of another config under the run_id
        (a collision of its hash) are damaged to this config."""
        if (legacy := self._legacy_check(config)) is not None:
            return config.legacy_run_id, legacy
        check = self._check(config.run_id)
        if check.config is not None and check.config.identity() != config.identity():
            theirs, ours = check.config.identity(), config.identity()
            differ = ", ".join(f"{key} {theirs[key]}, not {ours[key]}" for key in ours if theirs[key] != ours[key])
            why = f"JSON is another run's with this id ({differ}): a collision of its hash"
            check = RunCheck(RunState.DAMAGED, why)
        return config.run_id, check

    def _check(self, run_id: str) -> RunCheck:
        try:
            text = self.json_path(run_id).read_text()
        except FileNotFoundError:
            if self.csv_path(run_id).exists():
                return RunCheck(RunState.PENDING, "no JSON (in flight or killed)")
            return RunCheck(RunState.PENDING, "not run")
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8
            return RunCheck(RunState.DAMAGED, f"unreadable JSON ({exc})")
        try:
            metadata, config = read_metadata(text, run_id)
        except Damage as exc:
            return RunCheck(RunState.DAMAGED, str(exc))
        status = RunStatus(metadata["status"])
        if status is RunStatus.FAILED:
            return RunCheck(RunState.FAILED, "failed", metadata, config)
        try:
            rows = read_rows(self.csv_path(run_id), metadata, config)
            if config.evals_per_epoch > 1:
                check_points(self.evals_path(run_id), metadata, config, rows)
        except Damage as exc:
            return RunCheck(RunState.DAMAGED, str(exc), metadata, config)
        return RunCheck(status.state, "", metadata, config, rows)

    def state(self, run: str | RunConfig) -> RunState:
        """The run's RunState (check's); the runs not done are what a sweep runs."""
        return self.check(run).state

    def recorded_run_ids(self) -> set[str]:
        """The ids of every run with a JSON file here, whatever spec it came from."""
        return {path.stem for path in self.runs_dir.glob("*.json")}

    def run_ids_on_disk(self) -> list[str]:
        """The ids of every run with a CSV or a JSON here (a run's points file is not a run), sorted."""
        csvs = {path.stem for path in self.runs_dir.glob("*.csv") if not path.name.endswith(".evals.csv")}
        return sorted(csvs | self.recorded_run_ids())

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
        check_no_links(self.root)
        stale = [*self.root.glob(".*.tmp"), *self.runs_dir.glob(".*.tmp")]
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return len(stale)

    @property
    def damaged_dir(self) -> Path:
        return self.root / "damaged"

    def set_aside_unusable(self, located: Mapping[RunConfig, tuple[str, RunCheck]]) -> list[tuple[str, str]]:
        """Move the files of each planned run (config -> `locate`'s (run_id, check) of it,
        made under the lock) that a sweep must not keep (`unusable`) into damaged_dir as
        <run_id>.<UTC time>.csv, .evals.csv and .json (kept, never deleted: they may be
        worth a look), so that the run counts as pending. Returns (run_id, why) of each run
        moved. UserError when a file cannot be moved. It reads no file itself."""
        check_no_links(self.root)
        moved = [(run_id, why) for config, (run_id, check) in located.items()
                 if (why := unusable(config, run_id, check))]  # fmt: skip
        for run_id, _ in moved:
            self._move_aside(run_id)
        return moved

    def _move_aside(self, run_id: str) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        try:
            self.damaged_dir.mkdir(exist_ok=True)
            # CSV first: killed in between, the JSON left alone is still damaged and moved next
            # time, whereas a CSV left alone would count as in flight and be overwritten.
            for path in (self.csv_path(run_id), self.evals_path(run_id), self.json_path(run_id)):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, self.damaged_dir / f"{run_id}.{stamp}{path.name.removeprefix(run_id)}")
        except OSError as exc:
            raise UserError(f"{self.damaged_dir}: cannot set damaged run {run_id} aside there "
                            f"({exc.strerror})") from None

    def write_run(self, outcome: RunOutcome) -> tuple[Path, Path]:
        """Write the run's CSV (its rows), then its points file when its config asks for
        points, then its JSON (its metadata), which marks the run done. Returns the CSV's and
        the JSON's paths. ValueError for a run_id that is no plain file name (the sweep writes
        only ids of its own runs: bnstudy.sweep.driver.vet)."""
        check_no_links(self.root)
        run_id = outcome.metadata["run_id"]
        if not isinstance(run_id, str) or not run_id or run_id.startswith(".") or "/" in run_id or "\0" in run_id:
            raise ValueError(f"not a run id: {run_id!r}")
        atomic_write_text(self.csv_path(run_id), rows_to_csv(outcome.rows))
        if outcome.measures_points:
            atomic_write_text(self.evals_path(run_id), rows_to_csv(outcome.points, EVALS_COLUMNS))
        atomic_write_text(self.json_path(run_id), json.dumps(outcome.metadata, indent=2) + "\n")
        return self.csv_path(run_id), self.json_path(run_id)

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's lock for a sweep (creating the folder and its `.lock`); UserError
        if another process holds it, `.lock` is not a plain file of its own, or one of the
        folder's own folders is a link (check_no_links).

        flock is released by the kernel when its holder dies, even by SIGKILL, so a killed
        sweep never leaves a stale lock behind.
        """
        check_no_links(self.root)
        with self._take_lock() as handle:
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _take_lock(self):
        """The open `.lock`, flocked, with this process's pid in it; on a UserError, nothing it
        created is left: no `.lock` (never an empty one, as a full disk left), no folder."""
        existing = _nearest_existing(self.root)
        try:
            with writing(self.root):
                self.root.mkdir(parents=True, exist_ok=True)
            fd, created = open_lock_file(self.root / ".lock")
            handle = open(fd, "r+")  # noqa: SIM115  (the caller closes it)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = handle.read().strip() or "another process"
                handle.close()
                raise UserError(f"{self.root}: another sweep is writing this study ({holder}); "
                                "wait for it or stop it") from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
            except OSError as exc:
                if created:  # still held: no other sweep can have taken this file meanwhile
                    os.unlink(self.root / ".lock")
                handle.close()
                raise UserError(f"{self.root}: cannot write results ({exc.strerror})") from None
            return handle
        except UserError:
            _remove_folders_made(self.root, existing)
            raise


def _remove_folders_made(folder: Path, existing: Path) -> None:
    """Remove `folder` and its parents below `existing` (what mkdir created) while empty."""
    path = folder.absolute()
    while path != existing and existing in path.parents:
        try:
            path.rmdir()
        except OSError:  # not empty, or not ours to remove
            return
        path = path.parent


# open() failing with these on a new lock file means the disk, not the file, is the problem
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def open_lock_file(path: Path, what: str = "the study's lock", maker: str = "the sweep") -> tuple[int, bool]:
    """(a read-write descriptor of the lock file `path`, whether this call created it). Its
    holder writes it, so it must be this folder's own file: never followed through a link
    (O_NOFOLLOW, O_EXCL), and refused when it is not a regular file or has other names (a
    hard link). UserError naming it (as `what`, which `maker` makes), or the folder when the
    disk cannot take it."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:  # 0o666 as for every result file; the kernel takes the umask off
            fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            fd, created = os.open(path, flags), False
    except OSError as exc:
        if exc.errno in _DISK_ERRORS:
            raise UserError(f"{path.parent}: cannot write results ({exc.strerror})") from None
        problem = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise _lock_error(path, problem, what, maker) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        kind = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a regular file"
        raise _lock_error(path, f"it is {kind}", what, maker)
    return fd, created


def _lock_error(path: Path, problem: str, what: str, maker: str) -> UserError:
    return UserError(f"{path}: cannot use it as {what} ({problem}); remove it, {maker} makes its own")
