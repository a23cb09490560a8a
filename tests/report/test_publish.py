"""bnstudy.report.publish: `bnstudy report` shows one whole report, the previous or the new, whenever
it is killed; what killed reports leave is removed; a concurrent report is refused and a
sweep's lock and cleanup do not touch it; links a user planted are replaced, never followed."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from studies import cfg, hand_rows, write_hand_run  # noqa: E402

from bnstudy.results import aggregate
from bnstudy import cli
from bnstudy.report import publish  # noqa: E402
from bnstudy.report.analysis import analyze  # noqa: E402
from bnstudy.report.figures import FIGURES, write_figures  # noqa: E402
from bnstudy.report.render import render_report  # noqa: E402
from bnstudy.results.store import RunStore  # noqa: E402

# What a reader opens: the tables and report.md, and every figure a report may draw (or an earlier
# report drew as SVG).
NAMES = ["summary.csv", "cells.csv", "claims.csv", "comparisons.csv", "report.md",
         *(f"figures/{name}{suffix}" for name in FIGURES for suffix in (".png", ".svg"))]  # fmt: skip
MUTATIONS = ("replace", "rename", "symlink", "link", "unlink", "rmdir", "mkdir")  # every change of a name on disk
KILLED = 9  # the exit status of a child "killed" at a step


def view(root: Path) -> dict[str, bytes]:
    """What a reader sees of the report in `root`: each name that opens, with its bytes."""
    seen = {}
    for name in NAMES:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            seen[name] = (root / name).read_bytes()
    return seen


def study_of(root: Path, variants: list[str]) -> Path:
    for variant in variants:
        write_hand_run(root, cfg(variant), hand_rows(cfg(variant), [0.5, 0.6, 0.55, 0.7]))
    return root


@dataclasses.dataclass
class Pipeline:
    """A study's report computed once (loading, analysis, figures and text: what takes a
    report its seconds), so that write_report spends its time on the files alone."""

    study: aggregate.StudyResults
    analysis: object
    figures: dict[str, bytes]  # each figure's PNG
    text: str

    @classmethod
    def of(cls, root: Path) -> "Pipeline":
        study = aggregate.load_results(root)
        a = analyze(study)
        with tempfile.TemporaryDirectory() as folder:
            figures = {name: (Path(folder) / f"{name}.png").read_bytes() for name in write_figures(a, Path(folder))}
        return cls(study, a, figures, render_report(a, list(figures)))

    def install(self, monkeypatch) -> None:
        """Make publish.write_report produce this pipeline's report, in whatever folder it is given."""

        def write(a, directory: Path, jobs: int = 1) -> list[str]:
            if self.figures:
                directory.mkdir(parents=True, exist_ok=True)
            for name, png in self.figures.items():
                (directory / f"{name}.png").write_bytes(png)
            return list(self.figures)

        monkeypatch.setattr(publish, "load_results", lambda root, include_extra=False: dataclasses.replace(
            self.study, root=Path(root)))  # fmt: skip
        monkeypatch.setattr(publish, "analyze", lambda study: self.analysis)
        monkeypatch.setattr(publish, "write_figures", write)
        monkeypatch.setattr(publish, "render_report", lambda a, drawn: self.text)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """The reports of a study of `none` alone (few figures) and of none and bn_before (more)."""
    base = tmp_path_factory.mktemp("pipelines")
    return {"none": Pipeline.of(study_of(base / "none", ["none"])),
            "both": Pipeline.of(study_of(base / "both", ["none", "bn_before"]))}  # fmt: skip


def steps(at=None) -> list[int]:
    """Count each change of a name on disk from now on (MUTATIONS; a whole shutil.rmtree is
    one: a folder half removed is a folder not yet removed), in the list returned; with
    `at`, die (os._exit, as kill -9: no cleanup, no finally) just before the at-th.
    For this process's life: call it in a child, or undo it (`monkeypatch.undo`)."""
    calls = [0]
    inside_rmtree = [False]

    def step():
        if not inside_rmtree[0]:
            calls[0] += 1
            if calls[0] == at:
                os._exit(KILLED)

    for name in MUTATIONS:
        real = getattr(os, name)
        setattr(os, name, lambda *args, _real=real, **kwargs: step() or _real(*args, **kwargs))
    real_rmtree = shutil.rmtree

    def rmtree(*args, **kwargs):
        step()
        inside_rmtree[0] = True
        try:
            return real_rmtree(*args, **kwargs)
        finally:
            inside_rmtree[0] = False

    shutil.rmtree = rmtree
    return calls


def count_steps(monkeypatch, act) -> int:
    """How many steps (`steps`) `act()` takes."""
    with monkeypatch.context() as patch:
        for name in MUTATIONS:
            patch.setattr(os, name, getattr(os, name))  # put back on leaving
        patch.setattr(shutil, "rmtree", shutil.rmtree)
        calls = steps()
        act()
    return calls[0]


def killed_at(step: int, act) -> int:
    """Run `act()` in a child process that dies just before its `step`-th step; its exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            steps(at=step)
            act()
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def legacy(root: Path) -> None:
    """Turn the report in `root` into what bnstudy wrote before versions: regular files."""
    for name, data in view(root).items():
        (root / name).unlink()
        (root / name).write_bytes(data)
    shutil.rmtree(root / ".reports", ignore_errors=True)


def add_svgs(root: Path) -> None:
    """Make the report in `root` what earlier bnstudy wrote: an SVG beside each PNG, shown by its link."""
    for png in (root / ".reports" / "current" / "figures").glob("*.png"):
        png.with_suffix(".svg").write_text(f"<svg>{png.stem}</svg>")
        (root / "figures" / f"{png.stem}.svg").symlink_to(f"../.reports/current/figures/{png.stem}.svg")


def assert_clean(root: Path) -> None:
    """One version under .reports, no link to a missing file, no staging folder of any kind."""
    entries = {p.name for p in (root / ".reports").iterdir()}
    versions = {name for name in entries if name.isdigit()}
    assert len(versions) == 1 and entries == {"current", "lock", *versions}, entries
    shown = {name for name in NAMES if (root / name).exists()}
    assert {name for name in NAMES if os.path.lexists(root / name)} == shown  # no dangling link
    if (root / "figures").is_dir():
        assert {f"figures/{p.name}" for p in (root / "figures").iterdir()} == {n for n in shown if "/" in n}
    assert not list(root.glob(".report-*"))


@pytest.mark.parametrize("scenario", ["figures added", "figures dropped", "from the layout before versions",
                                      "first report", "after SVGs", "after SVGs, before versions"])  # fmt: skip
def test_a_report_killed_at_any_step_shows_the_previous_report_or_the_new_one_whole(tmp_path, pipelines, monkeypatch,
                                                                                    scenario):  # fmt: skip
    before, after = {"figures added": ("none", "both"), "figures dropped": ("both", "none"),
                     "from the layout before versions": ("none", "both"), "first report": (None, "both"),
                     "after SVGs": ("none", "both"), "after SVGs, before versions": ("none", "both")}[scenario]
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # for power cuts; a kill loses no written file
    template = tmp_path / "template"
    template.mkdir()
    if before:
        pipelines[before].install(monkeypatch)
        publish.write_report(template)
        if "SVGs" in scenario:
            add_svgs(template)
        if scenario.endswith("before versions"):
            legacy(template)
    old = view(template)
    pipelines[after].install(monkeypatch)
    assert set(pipelines[before or "none"].figures) != set(pipelines[after].figures) or not before

    def fresh(name: str) -> Path:
        root = tmp_path / name
        shutil.copytree(template, root, symlinks=True)
        return root

    scratch = fresh("scratch")
    steps = count_steps(monkeypatch, lambda: publish.write_report(scratch))
    new = view(scratch)
    assert new != old and steps > 10 and not [name for name in new if name.endswith(".svg")]  # PNGs only
    killed = {}
    for step in range(1, steps + 1):
        root = killed[step] = fresh(f"killed{step}")
        assert killed_at(step, lambda: publish.write_report(root)) == KILLED
        seen = view(root)
        mixed = sorted(name for name in set(old) | set(new) if seen.get(name) not in (old.get(name), new.get(name)))
        assert seen in (old, new), f"killed before step {step} of {steps}: a mix of two reports ({mixed or 'names'})"
        RunStore(root).remove_stale_temps()  # a sweep starting now removes none of it
        assert view(root) == seen
    for step, root in killed.items():
        publish.write_report(root)  # the next report: the new one, and nothing left of the killed one
        assert view(root) == new
        assert_clean(root)


def test_a_second_report_while_one_is_writing_is_refused_and_changes_nothing(tmp_path, capsys):
    root = study_of(tmp_path / "study", ["none"])
    assert cli.main(["report", str(root)]) == 0
    write_hand_run(root, cfg("bn_before"), hand_rows(cfg("bn_before"), [0.3, 0.4, 0.5, 0.2]))
    capsys.readouterr()
    before = view(root)
    with open(root / ".reports" / "lock", "r+") as held:  # as the first report holds it while it writes
        fcntl.flock(held, fcntl.LOCK_EX)
        held.truncate()
        held.write("pid 4242")
        held.flush()
        entries = sorted(p.relative_to(root) for p in root.rglob("*"))
        assert cli.main(["report", str(root)]) == 2
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == entries
    err = capsys.readouterr().err
    assert err == (f"bnstudy: error: {root}: another `bnstudy report` is writing this study's report (pid 4242); "
                   "wait for it to end\n")  # fmt: skip
    assert view(root) == before
    assert cli.main(["report", str(root)]) == 0 and view(root) != before


def test_a_report_beside_a_running_sweep_leaves_the_sweeps_lock_alone(tmp_path):
    root = study_of(tmp_path / "study", ["none", "bn_before"])
    with RunStore(root).lock():
        lock = (root / ".lock").read_bytes()
        assert cli.main(["report", str(root)]) == 0
        assert (root / ".lock").read_bytes() == lock and (root / ".lock").is_file()
        assert RunStore(root).remove_stale_temps() == 0  # the sweep's cleanup finds nothing of the report's
    assert "2 of 2 done" in (root / "report.md").read_text()
    assert_clean(root)


def test_what_killed_reports_left_is_removed(tmp_path):
    root = study_of(tmp_path / "study", ["none"])
    (root / ".reports" / "7" / "figures").mkdir(parents=True)  # a version a killed report was writing
    (root / ".reports" / "7" / "report.md").write_text("half a report")
    (root / ".reports" / ".link-0123").symlink_to(".reports/current/report.md")
    old, recent = root / ".report-old", root / ".report-recent"  # staging folders of bnstudy before versions
    for folder in (old, recent):
        (folder / "figures").mkdir(parents=True)
        (folder / "report.md").write_text("staged")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    assert cli.main(["report", str(root)]) == 0
    assert not old.exists() and recent.is_dir()  # one that may still be a live report's stays, for now
    assert {p.name for p in (root / ".reports").iterdir()} == {"1", "current", "lock"}  # 7 and the link gone
    assert (root / "report.md").read_text().startswith("# ")


def test_links_a_user_planted_are_replaced_never_followed(tmp_path, capsys):
    root, elsewhere = study_of(tmp_path / "study", ["none"]), tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "report.md").write_text("the user's own file")
    (root / "report.md").symlink_to(elsewhere / "report.md")
    (root / ".reports").mkdir()
    (root / ".reports" / "current").symlink_to(elsewhere, target_is_directory=True)
    assert cli.main(["report", str(root)]) == 0
    assert sorted(p.name for p in elsewhere.iterdir()) == ["report.md"]
    assert (elsewhere / "report.md").read_text() == "the user's own file"
    assert (root / "report.md").read_text().startswith("# ")
    assert os.readlink(root / ".reports" / "current") == "1"
    shutil.rmtree(root / ".reports")
    (root / ".reports").symlink_to(elsewhere, target_is_directory=True)  # the versions' folder itself: refused
    assert cli.main(["report", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bnstudy: error: {root / '.reports'}: a symbolic link;") and err.count("\n") == 1
    assert sorted(p.name for p in elsewhere.iterdir()) == ["report.md"]


def test_the_published_names_open_where_users_read_them_and_copy_as_files(tmp_path):
    root = study_of(tmp_path / "study", ["none", "bn_before"])
    assert cli.main(["report", str(root)]) == 0
    copy = tmp_path / "copy"
    (copy / "figures").mkdir(parents=True)
    for name in ("report.md", "summary.csv", "cells.csv", "claims.csv", "comparisons.csv"):  # as `make reference`
        shutil.copy(root / name, copy / name)
        assert not (copy / name).is_symlink() and (copy / name).read_bytes() == (root / name).read_bytes()
    pngs = sorted((root / "figures").glob("*.png"))
    assert pngs and all(png.stat().st_size > 0 for png in pngs)
    moved = tmp_path / "moved"
    root.rename(moved)  # the links are relative: the folder can move
    assert view(moved) and (moved / "report.md").read_bytes() == (copy / "report.md").read_bytes()
