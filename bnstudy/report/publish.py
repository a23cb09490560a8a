"""Writing a study's report, all or nothing: `bnstudy report DIR`.

write_report computes the Analysis once (bnstudy.report.analysis), draws its figures, renders
report.md (bnstudy.report.render) and the tables, and publishes them in one atomic step:

    DIR/.reports/<n>/           one whole report (the files below), written before it is shown
    DIR/.reports/current        a symbolic link to the shown version's <n>, switched by os.replace
    DIR/.reports/lock           flock of the one report writing DIR/.reports
    DIR/report.md, summary.csv, cells.csv, claims.csv, comparisons.csv
                                links to .reports/current/<name>
    DIR/figures/<name>.png      links to ../.reports/current/figures/<name>.png (figures/ a
                                folder of its own, as check_no_links requires)

Every name a reader opens goes through `current`, so replacing that one link shows the new
report whole, at once: a report killed at any moment leaves the previous one as it was (its
folder is the one `current` names), or the new one. A link that names a file the shown version
lacks opens as no file: a figure the new report does not draw is gone the moment `current`
moves, and its link is removed right after. A report holds the lock from before it writes its
version to after it removed the older ones, so any other version folder under .reports is a
killed report's, and the next report removes it. The regular files of a report written before
this layout become the first version without changing what a reader sees (`adopt`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import stat
import time
import uuid
from pathlib import Path

import pandas as pd

from bnstudy.results.aggregate import load_results
from bnstudy.report.analysis import analyze
from bnstudy.errors import UserError
from bnstudy.report.figures import FIGURES, write_figures
from bnstudy.report.forked import ChildDied, default_jobs
from bnstudy.report.render import damaged_runs, extra_text, incomplete_cells, render_report, skipped_text
from bnstudy.results.store import (atomic_write_text, check_no_links, check_writable, format_damaged, fsync_folder,
                           open_lock_file)  # fmt: skip

REPORTS = ".reports"  # the versions, `current` and the lock
TABLES = ("summary.csv", "cells.csv", "claims.csv", "comparisons.csv", "report.md")
# Every name a report publishes in DIR, relative: what a reader opens. The SVGs are the ones earlier
# reports wrote beside each PNG (a report writes PNGs only now): listed so that the next report
# removes their links (or adopts, then removes, their files) as it does a figure it no longer draws.
PUBLISHED = (*TABLES, *(f"figures/{name}{suffix}" for name in FIGURES for suffix in (".png", ".svg")))
VERSION = re.compile(r"[0-9]+")
LEGACY_STAGING_AGE = 3600  # s: a `.report-*` staging folder of bnstudy before this layout, surely dead by then


@dataclasses.dataclass
class Outputs:
    """What write_report wrote, and what the CLI says about it."""

    summary_csv: Path
    cells_csv: Path
    figures: list[Path]
    report_md: Path
    runs: int
    skipped: pd.DataFrame  # StudyResults.skipped
    incomplete: pd.DataFrame  # incomplete_cells(...)
    extra: str  # extra_text(...)


def write_report(root: str | os.PathLike, include_extra: bool = False, jobs: int | None = None) -> Outputs:
    """Load the study in `root` (its spec's runs, and with `include_extra` the other done
    runs there too) and write summary.csv, cells.csv, claims.csv, comparisons.csv,
    figures/ and report.md there, all or nothing (the module's docstring): a failure
    (UserError: one line) leaves the previous report as it was. `jobs` processes draw the
    figures (figures.write_figures; default: forked.default_jobs()). UserError too when there is
    nothing to report, `root` is not writable, or another report is writing it."""
    study = load_results(root, include_extra)
    check_no_links(study.root)  # never write or delete through a linked figures/ or .reports/
    check_writable(study.root)
    check_destinations(study.root)
    a = analyze(study)
    incomplete = incomplete_cells(a.missing, a.extra)
    try:
        with new_version(study.root) as version:
            drawn = write_figures(a, version / "figures", default_jobs() if jobs is None else jobs)
            texts = {"summary.csv": a.summary.to_csv(index=False), "cells.csv": a.cells.to_csv(index=False),
                     "claims.csv": a.claims.to_csv(index=False), "comparisons.csv": a.comparisons.to_csv(index=False),
                     "report.md": render_report(a, drawn)}  # fmt: skip
            for name, text in texts.items():
                atomic_write_text(version / name, text)
    except (OSError, ChildDied) as exc:  # ChildDied: a process drawing figures was killed
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        raise UserError(f"{study.root}: cannot write the report "
                        f"({getattr(exc, 'strerror', None) or exc}{where})") from None  # fmt: skip
    return Outputs(study.root / "summary.csv", study.root / "cells.csv",
                   [study.root / "figures" / f"{name}.png" for name in drawn], study.root / "report.md",
                   len(a.summary), study.skipped, incomplete, extra_text(study))  # fmt: skip


def check_destinations(root: Path) -> None:
    """UserError when a published name is taken by a folder, or figures/ by a file."""
    figures = root / "figures"
    if os.path.lexists(figures) and not figures.is_dir():
        raise UserError(f"{figures}: a file where the report writes its figures/ folder; move it away")
    for name in PUBLISHED:
        if _is(root / name, stat.S_ISDIR):
            raise UserError(f"{root / name}: a folder where the report writes a file; move it away")


# ---------------------------------------------------------------- versions and their publication
@contextlib.contextmanager
def new_version(root: Path):
    """Hold the report lock of study folder `root`, remove what killed reports left, and
    yield a new empty version folder; once the block ends without an exception, publish it
    (`publish`). On an exception the folder goes, and the shown report stays as it was."""
    reports = root / REPORTS
    with report_lock(reports):
        remove_stale(root, reports)
        adopt(root, reports)
        version = make_version(reports)
        try:
            yield version
            publish(root, version)
        except BaseException:
            if current_version(reports) != version:
                shutil.rmtree(version, ignore_errors=True)
            raise
        remove_stale(root, reports)


@contextlib.contextmanager
def report_lock(reports: Path):
    """Create `reports` if needed and hold the flock of reports/lock for the block; UserError
    when another report holds it (it is the one writing this study's report)."""
    reports.mkdir(exist_ok=True)
    if not _is(reports, stat.S_ISDIR):  # a link made meanwhile (check_no_links refused one before)
        raise UserError(f"{reports}: not a folder of its own; remove it, the report makes its own")
    fd, _ = open_lock_file(reports / "lock", "the report's lock", "the report")
    with open(fd, "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            raise UserError(f"{reports.parent}: another `bnstudy report` is writing this study's report ({holder}); "
                            "wait for it to end") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield


def current_version(reports: Path) -> Path | None:
    """The version folder that reports/current names, or None (no link, or not one of ours)."""
    try:
        name = os.readlink(reports / "current")
    except OSError:  # none yet, or a file that is not a link
        return None
    return reports / name if VERSION.fullmatch(name) and _is(reports / name, stat.S_ISDIR) else None


def make_version(reports: Path) -> Path:
    """A new empty version folder reports/<n>, n above every version there."""
    n = 1 + max((int(entry.name) for entry in reports.iterdir() if VERSION.fullmatch(entry.name)), default=0)
    version = reports / str(n)
    version.mkdir()
    return version


def publish(root: Path, version: Path) -> None:
    """Show `version` as the report of `root` in one step: its files made durable, a link in
    `root` for each of its names (links already there go through `current` and show the
    previous report until the switch), `current` switched to it, then the links of names it
    lacks removed."""
    names = [name for name in PUBLISHED if _is(version / name, stat.S_ISREG)]
    _sync_tree(version)
    for name in names:
        link(root, name)
    switch(root / REPORTS, version.name)
    unlink_missing(root, version)


def unlink_missing(root: Path, shown: Path | None) -> None:
    """Remove the links in `root` to names the shown version lacks (they open as no file)."""
    for name in PUBLISHED:
        if _is_our_link(root, name) and not (shown and _is(shown / name, stat.S_ISREG)):
            os.unlink(root / name)


def link(root: Path, name: str) -> None:
    """Make root/<name> the link to reports/current/<name> (relative, so the folder can move),
    unless it is already; replaces whatever file or link is there, never following it."""
    path = root / name
    target = os.path.relpath(root / REPORTS / "current" / name, path.parent)
    if _is_our_link(root, name):
        return
    path.parent.mkdir(exist_ok=True)
    temporary = root / REPORTS / f".link-{uuid.uuid4().hex}"
    os.symlink(target, temporary)
    os.replace(temporary, path)


def _is_our_link(root: Path, name: str) -> bool:
    path = root / name
    try:
        return os.readlink(path) == os.path.relpath(root / REPORTS / "current" / name, path.parent)
    except OSError:
        return False


def switch(reports: Path, version: str) -> None:
    """Point reports/current at `version`: a new link moved over the old one (os.replace, atomic)."""
    temporary = reports / f".current-{uuid.uuid4().hex}"
    os.symlink(version, temporary)
    os.replace(temporary, reports / "current")
    fsync_folder(reports)


def adopt(root: Path, reports: Path) -> None:
    """Make the regular files at published names (a report of bnstudy before this layout)
    part of a version, without changing what a reader sees: a new version holding what each
    published name shows now (hard links, or copies where the file system has none), made
    current, then each regular file replaced by its link. Nothing to do without one."""
    legacy = [name for name in PUBLISHED if _is(root / name, stat.S_ISREG)]
    if not legacy:
        return
    shown, snapshot = current_version(reports), make_version(reports)
    for name in PUBLISHED:
        source = root / name if name in legacy else shown / name if shown and _is_our_link(root, name) else None
        if source is not None and _is(source, stat.S_ISREG):
            (snapshot / name).parent.mkdir(exist_ok=True)
            try:
                os.link(source, snapshot / name, follow_symlinks=False)
            except OSError:
                shutil.copy2(source, snapshot / name, follow_symlinks=False)
    _sync_tree(snapshot)
    switch(reports, snapshot.name)
    for name in legacy:
        link(root, name)


def remove_stale(root: Path, reports: Path) -> None:
    """Holding the report lock: remove every entry of `reports` but the lock, `current` and
    the version it names (killed reports' versions and temporary links, earlier versions),
    the links in `root` to names that version lacks (a killed report's), and the `.report-*`
    staging folders of bnstudy before this layout, once an hour old."""
    shown = current_version(reports)
    for entry in reports.iterdir():
        if entry.name not in ("lock", "current") and entry != shown:
            _remove(entry)
    unlink_missing(root, shown)
    for entry in root.glob(".report-*"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - entry.lstat().st_mtime > LEGACY_STAGING_AGE:
                _remove(entry)


def _remove(path: Path) -> None:
    """Delete `path`: a folder with its contents (rmtree follows no link), else the file or link."""
    if _is(path, stat.S_ISDIR):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _is(path: Path, kind) -> bool:
    """Whether `path` itself (not what a link names) is of `kind` (stat.S_ISREG, S_ISDIR)."""
    try:
        return kind(os.lstat(path).st_mode)
    except OSError:
        return False


def _sync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, so that a power cut after the switch finds them whole."""
    for directory, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_folder(Path(directory))


def format_outputs(out: Outputs) -> str:
    """What `bnstudy report` prints: what was reported and skipped (damaged runs by name, a
    few), the extra runs, the incomplete cells, the files written."""
    lines = [f"{out.runs} runs reported; skipped: {skipped_text(out.skipped)}"]
    if damaged := damaged_runs(out.skipped):
        lines += ["damaged runs, left out (`bnstudy sweep` sets them aside and redoes them):", *format_damaged(damaged)]
    if out.extra:
        lines.append(f"extra: {out.extra}")
    lines += [f"incomplete: {row['cell']}: missing {row['missing runs']}" for _, row in out.incomplete.iterrows()]
    lines.append(f"wrote {out.summary_csv}, {out.cells_csv}")
    if out.figures:  # none when every run diverged in its first epoch
        lines.append(f"wrote {len(out.figures)} figures (PNG) in {out.figures[0].parent}")
    lines.append(f"wrote {out.report_md}")
    return "\n".join(lines)
