"""The run_id: every identity setting is in it, and runs written by bnstudy 0.1 keep theirs.

A run_id that ignored a setting would make a sweep with `--set epochs=10` find the old
5-epoch runs done; a run_id that changed would make every finished run pending again."""

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest

from bnstudy.settings import SETTINGS, RunConfig, SettingError, from_record

BASE = RunConfig(variant="bn_before", lr=1e-3, batch_size=64, epochs=5)
FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "v0_1_study" / "runs"


def changed(setting) -> RunConfig:
    """BASE with `setting` at another value it allows there (tried in turn: the other
    choices, else numbers near BASE's, or 1000 for an unset limit)."""
    value = getattr(BASE, setting.name)
    if setting.choices:
        candidates = setting.choices
    elif value is None:
        candidates = (1000,)
    else:
        candidates = (value * 2, value + 1, value / 2)
    for candidate in [c for c in map(setting.kind, candidates) if c != value]:
        with contextlib.suppress(SettingError):  # not allowed in BASE: try the next
            return dataclasses.replace(BASE, **{setting.name: candidate})
    pytest.fail(f"no other valid value of {setting.name} found from {value!r}; extend changed()")


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.identity], ids=lambda s: s.name)
def test_changing_any_one_identity_setting_changes_the_run_id(setting):
    config = changed(setting)
    assert config.run_id != BASE.run_id, f"{setting.name} = {getattr(config, setting.name)!r} kept BASE's run_id"


def test_runs_written_by_bnstudy_0_1_keep_their_run_ids():
    paths = sorted(FIXTURE_RUNS.glob("*.json"))
    assert len(paths) == 2
    for path in paths:
        record = json.loads(path.read_text())
        assert from_record(record["config"], record["study"]).run_id == record["run_id"] == path.stem


def test_evals_per_epoch_is_tagged_and_bounded_by_the_steps_of_an_epoch():
    # 513 = 8 x 64 + 1: 8 steps an epoch, the lone last sample joining the eighth batch
    tiny = dict(variant="bn_before", lr=1e-3, batch_size=64, epochs=2, limit_train=513)
    assert "-k" not in RunConfig(**tiny).run_id
    assert "-s0-k8-" in RunConfig(**tiny, evals_per_epoch=8).run_id
    with pytest.raises(SettingError, match="at most the 8 training steps of an epoch"):
        RunConfig(**tiny, evals_per_epoch=9)
    with pytest.raises(SettingError, match="between 1 and 100"):
        RunConfig(**{**tiny, "limit_train": None}, evals_per_epoch=101)
