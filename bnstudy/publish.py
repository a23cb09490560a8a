"""Writing a study's report, all or nothing: `bnstudy report DIR`.

write_report computes the Analysis once (bnstudy.analysis), draws its figures, renders
report.md (bnstudy.report) and the tables, stages every file in a hidden folder of the
study and moves them into place only once all were written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from bnstudy.aggregate import load_results
from bnstudy.analysis import analyze
from bnstudy.errors import UserError
from bnstudy.figures import FIGURES, draw_figures, save_figures
from bnstudy.report import damaged_runs, extra_text, incomplete_cells, render_report, skipped_text
from bnstudy.store import atomic_write_text, check_no_links, check_writable, format_damaged


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


def write_report(root: str | os.PathLike, include_extra: bool = False) -> Outputs:
    """Load the study in `root` (its spec's runs, and with `include_extra` the other done
    runs there too) and write summary.csv, cells.csv, claims.csv, comparisons.csv,
    figures/ and report.md there.

    All or nothing: the files are written into a hidden staging folder in `root` and moved
    into place only once all of them were written and every destination was checked, so a
    failure (UserError: one line) leaves the previous report's files as they were. Figures
    of FIGURES that this report does not draw are removed from figures/ (a previous
    report's, which report.md would not show). UserError too when there is nothing to
    report or `root` is not writable."""
    study = load_results(root, include_extra)
    check_no_links(study.root)  # never write or delete through a linked figures/
    check_writable(study.root)
    a = analyze(study)
    incomplete = incomplete_cells(a.missing, a.extra)
    try:
        with staging_folder(study.root) as stage:
            drawn = [png.stem for png in save_figures(draw_figures(a), stage / "figures")]
            texts = {"summary.csv": a.summary.to_csv(index=False), "cells.csv": a.cells.to_csv(index=False),
                     "claims.csv": a.claims.to_csv(index=False), "comparisons.csv": a.comparisons.to_csv(index=False),
                     "report.md": render_report(a, drawn)}  # fmt: skip
            for name, text in texts.items():
                atomic_write_text(stage / name, text)
            # report.md last: it links the figures, which must be there before it
            staged = [f"figures/{name}{suffix}" for name in drawn for suffix in (".png", ".svg")] + list(texts)
            publish(stage, study.root, staged)
            remove_undrawn_figures(study.root / "figures", drawn)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise UserError(f"{study.root}: cannot write the report ({exc.strerror or exc}{where})") from None
    return Outputs(study.root / "summary.csv", study.root / "cells.csv",
                   [study.root / "figures" / f"{name}.png" for name in drawn], study.root / "report.md",
                   len(a.summary), study.skipped, incomplete, extra_text(study))  # fmt: skip


@contextlib.contextmanager
def staging_folder(root: Path):
    """A new hidden folder `root`/.report-*, removed with whatever is left in it on exit.
    (Not named *.tmp: a sweep deletes its own stale `.*.tmp` files, and this is a folder.)"""
    stage = Path(tempfile.mkdtemp(dir=root, prefix=".report-"))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, root: Path, names: list[str]) -> None:
    """Move each staged file `stage`/<name> to `root`/<name>, in the order of `names`
    (relative paths). UserError before the first move when a destination is taken by a
    folder, or its folder by a file; a move can then fail only if `root` changes meanwhile."""
    for name in names:
        target = root / name
        if target.parent.exists() and not target.parent.is_dir():
            raise UserError(f"{target.parent}: a file where the report writes its {target.parent.name}/ folder; "
                            f"move it away")  # fmt: skip
        if target.is_dir():
            raise UserError(f"{target}: a folder where the report writes a file; move it away")
    for name in names:
        (root / name).parent.mkdir(exist_ok=True)
        os.replace(stage / name, root / name)


def remove_undrawn_figures(directory: Path, drawn: list[str]) -> None:
    """Delete directory/<name>.png and .svg of each FIGURES name not in `drawn`, where present."""
    if not directory.is_dir():
        return
    for name in FIGURES.keys() - set(drawn):
        for suffix in (".png", ".svg"):
            (directory / f"{name}{suffix}").unlink(missing_ok=True)


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
        lines.append(f"wrote {len(out.figures)} figures (PNG and SVG) in {out.figures[0].parent}")
    lines.append(f"wrote {out.report_md}")
    return "\n".join(lines)
