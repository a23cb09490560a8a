"""A property of every command on a study folder: whatever links a user or an attacker planted
in it, bnstudy never writes, moves or deletes anything outside it.

Random layouts: each place bnstudy writes, moves or deletes in (runs/, damaged/, figures/,
.reports/, .lock, spec.toml, report.md, the tables, a run's files, a stale temporary) is
either absent, bnstudy's own, or a link into a sibling folder holding same-named files and
folders. Then `status`, `sweep` (every run done by hand but one damaged, so that it is set
aside and its run trains) and `report` run in a random order; each may refuse (exit 2), but
the sibling folder must be exactly as it was: same entries, same bytes, same link targets.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from bnstudy.cli import main
from bnstudy.config.spec import load_study
from studies import hand_rows, tiny_spec, write_hand_run

# place in the study -> "dir" or "file": what bnstudy makes there itself
PLACES = {
    "runs": "dir", "damaged": "dir", "figures": "dir", ".reports": "dir", ".lock": "file", "spec.toml": "file",
    "report.md": "file", "summary.csv": "file", "cells.csv": "file", "claims.csv": "file",
}  # fmt: skip
RUN_FILE_SUFFIXES = (".csv", ".json")


def snapshot(root: Path) -> dict:
    """Every entry under `root`, not following links: its kind and bytes' hash, or link target."""
    entries = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink():
                entries[path] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[path] = ("dir",)
            else:
                entries[path] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
    return entries


def plant(sibling: Path, name: str, kind: str) -> Path:
    """A same-named target in the sibling folder: a folder with files a sweep or report would
    touch (a stale-looking temporary, figures, run files), or a file."""
    target = sibling / name
    if kind == "dir":
        target.mkdir(exist_ok=True)
        for child in (".x.csv.abc123.tmp", "comparisons.png", "comparisons.svg", "a.csv", "a.json", "report.md"):
            (target / child).write_text(f"the user's own {child}\n")
    else:
        target.write_text(f"the user's own {name}\n")
    return target


def layout(rng: random.Random, study: Path, sibling: Path, run_ids: list[str]) -> list[str]:
    """Plant links in `study` at random; the names of the places made links."""
    linked = []
    for name, kind in PLACES.items():
        if rng.random() < 0.3:
            if (study / name).exists():  # the hand-made runs/: moved into the sibling, linked back
                (study / name).rename(sibling / name)
            (study / name).symlink_to(plant(sibling, name, kind), target_is_directory=kind == "dir")
            linked.append(name)
    runs = study / "runs"
    if not runs.is_symlink():
        runs.mkdir(exist_ok=True)
        for run_id in run_ids:
            for suffix in RUN_FILE_SUFFIXES:
                path = runs / f"{run_id}{suffix}"
                if rng.random() < 0.15:  # a run's file replaced by a link to a file of the sibling
                    path.unlink(missing_ok=True)
                    path.symlink_to(plant(sibling, path.name, "file"))
                    linked.append(f"runs/{path.name}")
        if rng.random() < 0.3:
            (runs / ".stale.csv.abc123.tmp").symlink_to(plant(sibling, ".stale.csv.abc123.tmp", "file"))
            linked.append("runs/.stale.csv.abc123.tmp")
    return linked


@pytest.mark.parametrize("trial", range(8))
def test_no_layout_of_links_makes_a_command_write_outside_the_study(tmp_path, capsys, trial):
    rng = random.Random(trial)
    spec = tmp_path / "tiny.toml"
    spec.write_text(tiny_spec("tiny", 'variant = ["none"]\nseed = [0, 1, 2]\n', epochs=1))
    study, sibling = tmp_path / "study", tmp_path / "sibling"
    study.mkdir()
    sibling.mkdir()
    configs = load_study(spec).runs()
    for config in configs:
        write_hand_run(study, config, hand_rows(config, [0.5]))
    (study / "runs" / f"{configs[0].run_id}.csv").write_text("run_id\n")  # damaged: set aside, then trained again
    linked = layout(rng, study, sibling, [c.run_id for c in configs])
    before = snapshot(sibling)
    commands = [["status", str(spec), "--out", str(study)],
                ["sweep", str(spec), "--out", str(study), "--jobs", "1"],
                ["report", str(study)]]  # fmt: skip
    rng.shuffle(commands)
    codes = [main(argv) for argv in commands]
    capsys.readouterr()
    assert snapshot(sibling) == before, (linked, codes)
    assert set(codes) <= {0, 1, 2}, (linked, codes)
