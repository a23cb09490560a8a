"""Results written by an older bnstudy stay valid: tests/fixtures/v0_1_study was written by
bnstudy 0.1.0, before run settings were declared in one place and before the activation and
bn_momentum settings existed. Its runs keep their ids, count as done, and report with the
new settings at their defaults. (tests/test_settings.py checks that their ids are rebuilt
from their configs.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from bnstudy import cli
from bnstudy.settings import BY_NAME
from bnstudy.spec import load_study
from bnstudy.store import RunStore

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v0_1_study"


def test_old_runs_count_as_done_for_their_spec(capsys):
    runs = load_study(FIXTURE / "spec.toml").runs()
    store = RunStore(FIXTURE)
    assert [store.state(c.run_id) for c in runs] == ["complete", "complete"]
    assert cli.main(["status", str(FIXTURE)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[:2] == ["all", "2"]


def test_old_runs_report_with_the_new_settings_at_their_defaults(tmp_path, capsys):
    study = tmp_path / "v0_1_study"
    shutil.copytree(FIXTURE, study)
    assert cli.main(["report", str(study)]) == 0
    assert "2 runs reported" in capsys.readouterr().out
    summary = pd.read_csv(study / "summary.csv")
    assert len(summary) == 2 and (summary["status"] == "complete").all()
    assert (summary["activation"] == BY_NAME["activation"].default).all()
    assert (summary["bn_momentum"] == BY_NAME["bn_momentum"].default).all()
    assert pd.read_csv(study / "cells.csv")["n"].tolist() == [1, 1]
