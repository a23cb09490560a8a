"""Results written by an older bnstudy stay valid: tests/fixtures/v0_1_study was written by
bnstudy 0.1.0, before run settings were declared in one place and before the activation and
bn_momentum settings existed; tests/fixtures/v0_2_study by bnstudy 0.2.0 (commit 6433c84),
with a setting added since 0.1 (activation) and points files. Both carry 6-digit run ids,
written before the run_id's hash grew (settings.RunConfig.legacy_run_id). Their runs keep
their ids, count as done, are not run again, and report as that code reported them (the
settings added since at their defaults): tests/fixtures/summaries/ holds the summary.csv it
wrote for each. (tests/config/test_settings.py checks that their ids are rebuilt from their configs.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bnstudy import cli
from bnstudy.config.spec import load_study
from bnstudy.results.store import RunStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "v0_1_study"
OLD_STUDIES = ["v0_1_study", "v0_2_study"]


def copied(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def run_files(study: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((study / "runs").iterdir())}


def test_old_runs_count_as_done_for_their_spec(capsys):
    runs = load_study(FIXTURE / "spec.toml").runs()
    store = RunStore(FIXTURE)
    assert [store.state(c) for c in runs] == ["complete", "complete"]
    assert cli.main(["status", str(FIXTURE)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[:2] == ["all", "2"]


@pytest.mark.parametrize("name", OLD_STUDIES)
def test_an_old_study_is_done_sweeps_nothing_and_reports_its_summary_byte_for_byte(tmp_path, capsys, name):
    study = copied(name, tmp_path)
    runs = load_study(study / "spec.toml").runs()
    before = run_files(study)
    store = RunStore(study)
    assert [store.run_id_of(c) for c in runs] == [c.legacy_run_id for c in runs]
    assert {store.run_id_of(c) + ".json" for c in runs} == {n for n in before if n.endswith(".json")}
    assert cli.main(["sweep", str(study / "spec.toml"), "--out", str(study), "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()[: len(runs)]
    assert listed == [f"complete  {c.legacy_run_id}" for c in runs]
    assert cli.main(["sweep", str(study / "spec.toml"), "--out", str(study)]) == 0
    assert f"nothing to run, all {len(runs)} runs are done" in capsys.readouterr().out
    assert run_files(study) == before  # nothing run, nothing moved aside
    assert cli.main(["report", str(study)]) == 0
    assert (study / "summary.csv").read_bytes() == (FIXTURES / "summaries" / f"{name}.csv").read_bytes()


def test_a_resumed_old_study_runs_its_new_runs_under_new_ids_and_keeps_its_old_ones(tmp_path, capsys):
    study = copied("v0_2_study", tmp_path)
    spec = tmp_path / "more.toml"  # the old spec with one more variant: two new runs
    old_grid = '["none", "bn_before"]'
    spec.write_text((study / "spec.toml").read_text().replace(old_grid, '["none", "bn_before", "bn_after"]'))
    before = run_files(study)
    assert cli.main(["sweep", str(spec), "--out", str(study), "--jobs", "1"]) == 0
    runs = load_study(spec).runs()
    new = [c for c in runs if c.variant == "bn_after"]
    added = {f"{c.run_id}{ext}" for c in new for ext in (".csv", ".evals.csv", ".json")}
    assert set(run_files(study)) - set(before) == added
    assert {name: text for name, text in run_files(study).items() if name in before} == before
    capsys.readouterr()
    assert cli.main(["sweep", str(spec), "--out", str(study)]) == 0
    assert "nothing to run, all 6 runs are done" in capsys.readouterr().out
    assert cli.main(["status", str(study)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[:3] == ["all", "6", "0"]  # done, and no other runs
    assert cli.main(["report", str(study)]) == 0
    summary = (study / "summary.csv").read_text().splitlines()
    old = (FIXTURES / "summaries" / "v0_2_study.csv").read_text().splitlines()
    assert summary[: len(old)] == old  # the old runs' rows as before, then the new ones
    assert [line.split(",")[0] for line in summary[len(old) :]] == [c.run_id for c in new]
