"""bnstudy.report.render and `bnstudy report`: the files written, report.md's numbers and
sentences, partial and broken studies, one-line errors."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.figure  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from studies import cfg, hand_rows, write_hand_run  # noqa: E402

from bnstudy.results import aggregate
from bnstudy import cli
from bnstudy.report import notebook  # noqa: E402
from bnstudy.report.figures import FIGURES  # noqa: E402


def test_partial_study_report_and_cli(partial_study, capsys):
    assert cli.main(["report", str(partial_study)]) == 0
    out = capsys.readouterr().out
    assert "incomplete: none at learning rate 0.001, batch size 256: missing seed 1 (failed)" in out
    assert "incomplete: bn_before at learning rate 0.001, batch size 256: missing seed 1 (not run)" in out
    text = (partial_study / "report.md").read_text()
    assert "3 of 3 cells lack runs" in text
    assert ("2 of 6 done (1 complete, 1 diverged); skipped: 1 failed, 1 damaged, 1 without its JSON (in flight or "
            "killed)") in text  # fmt: skip
    damaged = cfg("bn_after", seed=1).run_id
    assert "**Damaged runs**, left out" in text and f"{damaged}: no CSV." in text
    assert "seed 1 (damaged: no CSV)" in text  # in the incomplete cells' table
    assert f"damaged runs, left out (`bnstudy sweep` sets them aside and redoes them):\n  {damaged}: no CSV\n" in out
    assert "1 of 2 runs diverged: bn_before at learning rate 0.001, batch size 256: seed 0." in text
    summary = pd.read_csv(partial_study / "summary.csv")
    assert len(summary) == 2 and summary["diverged"].dtype == bool
    for table in re.findall(r"(?:^\|.*\|\n)+", text, flags=re.M):  # every Markdown table is rectangular
        assert len({len(re.findall(r"(?<!\\)\|", line)) for line in table.splitlines()}) == 1  # "\|" is text


def test_study_where_every_run_diverged_at_once(tmp_path, capsys):
    for variant in ("none", "bn_before"):
        write_hand_run(tmp_path, cfg(variant), hand_rows(cfg(variant), [0.1], nan_from=1), status="diverged")
    assert cli.main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "2 of 2 runs diverged" in text and "None: no run has an epoch with finite loss and accuracy." in text
    assert "## The reference notebook" not in text and not (tmp_path / "figures").exists()


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "only_failed"])

def test_bad_study_folder_is_one_error_line(tmp_path, capsys, kind):
    target = tmp_path / "study"
    if kind == "file":
        target.write_text("x")
    elif kind == "empty":
        (target / "runs").mkdir(parents=True)
    elif kind == "only_failed":
        write_hand_run(target, cfg(), hand_rows(cfg(), [0.3]), status="failed")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert cli.main(["report", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("bnstudy: error: ")
    assert str(target) in captured.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


REPORT_FILES = ("summary.csv", "cells.csv", "report.md")


@pytest.fixture
def reported(tmp_path, capsys):
    """A hand-made study reported once and then given a third seed, so that a new report
    would differ: (its folder, {file: bytes} of the first report's files, figures included)."""
    for seed in (0, 1):
        config = cfg("bn_before", seed=seed)
        write_hand_run(tmp_path, config, hand_rows(config, [0.5, 0.6 + 0.1 * seed, 0.55, 0.7]))
    assert cli.main(["report", str(tmp_path)]) == 0
    capsys.readouterr()
    written = [tmp_path / name for name in REPORT_FILES] + sorted((tmp_path / "figures").iterdir())
    config = cfg("bn_before", seed=2)
    write_hand_run(tmp_path, config, hand_rows(config, [0.3, 0.4, 0.5, 0.2]))
    return tmp_path, {path: path.read_bytes() for path in written}


def assert_fails_and_changes_nothing(root, before: dict, capsys, message: str, *flags: str) -> None:
    assert cli.main(["report", str(root), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("bnstudy: error: ")
    assert message in captured.err
    assert {path: path.read_bytes() for path in before} == before
    assert not list(root.glob(".report-*"))  # the staging folder is gone


def test_a_file_in_place_of_figures_fails_before_anything_is_replaced(reported, capsys):
    root, before = reported
    shutil.rmtree(root / "figures")
    (root / "figures").write_text("not a folder")
    before = {path: data for path, data in before.items() if path.parent == root}
    assert_fails_and_changes_nothing(root, before, capsys, f"{root / 'figures'}: a file where the report writes its "
                                                           f"figures/ folder; move it away")  # fmt: skip


def test_a_save_that_fails_midway_leaves_the_previous_report(reported, capsys, monkeypatch):
    root, before = reported
    real_savefig, saves = matplotlib.figure.Figure.savefig, []

    def savefig_until_the_disk_is_full(fig, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 3:  # the third figure's PNG
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig_until_the_disk_is_full)
    open_before = plt.get_fignums()
    assert_fails_and_changes_nothing(root, before, capsys, "cannot write the report (No space left on device: ",
                                     "--jobs", "1")  # fmt: skip
    assert len(saves) == 3 and plt.get_fignums() == open_before  # every figure closed, also after the failure


def in_a_figure_process(fault):
    """A Figure.savefig that does `fault(path)` in a forked figure process and saves slowly
    here, so that the forked process surely takes figures (bnstudy.report.forked)."""
    here, real_savefig = os.getpid(), matplotlib.figure.Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        if os.getpid() != here:
            fault(path)
        time.sleep(0.15)
        return real_savefig(fig, path, *args, **kwargs)

    return savefig


def disk_full(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def killed(path):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("fault, message", [
    (disk_full, "cannot write the report (No space left on device: "),
    (killed, "cannot write the report (a forked child ended without its results (killed by signal 9))"),
])  # fmt: skip
def test_a_figure_process_that_fails_leaves_the_previous_report(reported, capsys, monkeypatch, fault, message):
    root, before = reported
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", in_a_figure_process(fault))
    open_before = plt.get_fignums()
    assert_fails_and_changes_nothing(root, before, capsys, message, "--jobs", "2")
    assert plt.get_fignums() == open_before
    versions = [p.name for p in (root / ".reports").iterdir() if p.name.isdigit()]
    assert versions == [os.readlink(root / ".reports" / "current")]  # the failed version is gone, figures and all


def test_figures_the_new_report_does_not_draw_are_removed(tmp_path):
    for variant in ("none", "bn_before"):
        config = cfg(variant)
        write_hand_run(tmp_path, config, hand_rows(config, [0.5, 0.6, 0.55, 0.7]))
    assert cli.main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "figures" / "eval_modes.png").is_file()
    (tmp_path / "runs" / f"{cfg('bn_before').run_id}.json").unlink()  # the study has no BN run any more
    (tmp_path / "runs" / f"{cfg('bn_before').run_id}.csv").unlink()
    assert cli.main(["report", str(tmp_path)]) == 0
    names = sorted(p.name for p in (tmp_path / "figures").iterdir())
    # one variant left: no BN run, no pair of variants to compare; 4 epochs reach no notebook window
    undrawn = ("eval_modes", "comparisons", "remedies", "notebook_window")  # and no remedy arm
    assert names == sorted(f"{name}.png" for name in FIGURES if name not in undrawn)


@pytest.fixture(scope="module")
def written(real_study):
    assert cli.main(["report", str(real_study)]) == 0
    return real_study


def test_report_files_open_in_pandas_and_viewers(written):
    summary = pd.read_csv(written / "summary.csv")
    cells = pd.read_csv(written / "cells.csv")
    assert len(summary) == 12 and len(cells) == 6
    assert ({"run_id", "variant", "lr", "seed", "diverged", "epochs_used", *aggregate.ALL_METRICS}
            <= set(summary.columns))  # fmt: skip
    assert {"n", "n_expected", "n_diverged", "seed_std", "final_acc_mean", "worst_drop_std"} <= set(cells.columns)
    text = (written / "report.md").read_text()
    links = re.findall(r"\]\((figures/[^)]+)\)", text)
    drawn = {link.removeprefix("figures/").rsplit(".", 1)[0] for link in links}
    assert links and all(link.endswith(".png") for link in links)  # each figure shown as its PNG, nothing else
    # the tiny runs mostly stay at chance: the figures left out say why
    assert all(name in drawn or FIGURES[name][0] in text.split("Not drawn: ")[1] for name in FIGURES)
    for link in links:
        assert (written / link).stat().st_size > 0
    image = plt.imread(written / "figures" / "accuracy_curves.png")
    assert image.shape[0] > 300 and image.shape[1] > 300


def test_every_claim_in_report_md_is_a_row_of_claims_csv(written, real_analysis):
    text = (written / "report.md").read_text()
    claims = pd.read_csv(written / "claims.csv")
    pd.testing.assert_frame_equal(claims, real_analysis.claims.reset_index(drop=True), check_dtype=False)
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and " − " in line]
    assert len(rows) == len(claims)  # every claim is shown in a table, once
    for cells in rows:
        verdict = cells[7]
        if verdict in ("higher", "lower"):
            a, b = cells[0].removeprefix("| ").split(" (")[0].split(" − ")
            match = claims[(claims["a"] == a) & (claims["b"] == b) & (claims["verdict"] == verdict)]
            assert len(match), cells
    assert "Grid**: variant (none, bn_before, bn_after) × learning rate (0.001, 0.01) × seed (0, 1)" in text
    assert "No run diverged (12 runs)." in text


def test_the_report_opens_with_its_answers_in_short_paragraphs(written):
    text = (written / "report.md").read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[:2] == ["Summary", "What was run"]
    summary = text.split("## Summary")[1].split("## ")[0]
    assert 1 <= summary.count("\n- ") <= 6
    for paragraph in re.split(r"\n(?=- )|\n\n", text):
        if not paragraph.startswith("|"):  # tables are not prose
            assert len(paragraph.split()) <= 120, paragraph[:80]


def test_the_analysis_is_computed_once_per_report(tmp_path, monkeypatch):
    from bnstudy.report import analysis

    for seed in range(2):
        for variant in ("none", "bn_before"):
            config = cfg(variant, seed=seed)
            write_hand_run(tmp_path, config, hand_rows(config, [0.5, 0.6 + 0.05 * seed, 0.55, 0.7]))
    calls = []
    real = analysis.comparison_claims
    monkeypatch.setattr(analysis, "comparison_claims", lambda summary: calls.append(1) or real(summary))
    assert cli.main(["report", str(tmp_path)]) == 0
    assert calls == [1]


def test_notebook_comparison_only_with_the_notebooks_cell(written, real_study, partial_study):
    study = aggregate.load_results(real_study)
    text = (written / "report.md").read_text()
    assert "## The reference notebook's test-accuracy swings" not in text  # 3 epochs reach neither log
    assert "*No comparison with the reference notebook's logs: no bn_before run reaches the train accuracy" in text
    partial = aggregate.load_results(partial_study)
    none_only = partial.epochs[partial.epochs["variant"] == "none"]
    assert notebook.notebook_section(none_only, partial.points).absent.startswith("the study has no bn_before run")
    # another activation or BN momentum is not the notebook's setting either
    for other in ({"activation": "relu"}, {"bn_momentum": 0.01}):
        section = notebook.notebook_section(study.epochs.assign(**other), study.points)
        assert section.absent.startswith("the study has no bn_before run"), other


def test_a_linked_figures_folder_is_refused_and_its_target_untouched(tmp_path, capsys):
    study, elsewhere = tmp_path / "study", tmp_path / "elsewhere"
    for variant in ("none", "bn_before"):
        write_hand_run(study, cfg(variant), hand_rows(cfg(variant), [0.5, 0.6, 0.55, 0.7]))
    elsewhere.mkdir()
    (elsewhere / "comparisons.png").write_text("the user's own figure")
    (study / "figures").symlink_to(elsewhere, target_is_directory=True)
    assert cli.main(["report", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnstudy: error: ") and "symbolic link" in err and err.count("\n") == 1
    assert [p.name for p in elsewhere.iterdir()] == ["comparisons.png"] and not (study / "report.md").exists()


def test_fixed_settings_leave_out_what_no_run_of_the_study_has(tmp_path):
    """A study of `none` alone has no BatchNorm: its BN momentum and the other BN settings are
    fixed at their defaults but set nothing, so What was run does not list them; one BN run
    brings them back."""
    from bnstudy.report.render import fixed_settings

    # (bn_impl applies to `none` too: its scratch runs keep their own ids; docs/DESIGN.md)
    bn_settings = {"norm", "bn_momentum", "ghost_batch_size", "frozen_bn_epochs"}
    write_hand_run(tmp_path, cfg("none"), hand_rows(cfg("none"), [0.5, 0.6, 0.55, 0.7]))
    fixed = fixed_settings(aggregate.load_results(tmp_path).expected)
    assert not bn_settings & fixed.keys()
    assert fixed["lr"] == 1e-3 and fixed["variant"] == "none" and fixed["limit_test"] == cfg("none").limit_test
    write_hand_run(tmp_path, cfg("bn_before"), hand_rows(cfg("bn_before"), [0.5, 0.6, 0.55, 0.7]))
    fixed = fixed_settings(aggregate.load_results(tmp_path).expected)
    assert bn_settings <= fixed.keys() and fixed["bn_momentum"] == 0.1 and "variant" not in fixed


def test_the_comparisons_note_names_the_tests_the_claims_ran():
    """Exact below 17 pairs, Monte Carlo above: the note says which the report's claims used
    (the default study's 18 and 27 pairs are Monte Carlo; it said "exact")."""
    from bnstudy.report.render import method_words
    from bnstudy.stats import contrasts

    exact, drawn = (contrasts.sign_flip_p(np.arange(1.0, n + 1))[1] for n in (6, 18))
    assert method_words(pd.Series([exact, contrasts.NO_TEST])) == "exact sign-flip tests"
    assert method_words(pd.Series([drawn, drawn])) == "sign-flip tests over 100,000 random sign patterns"
    assert method_words(pd.Series([exact, drawn])) == ("sign-flip tests (exact up to 16 pairs, over 100,000 random "
                                                       "sign patterns above)")  # fmt: skip
