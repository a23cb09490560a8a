"""The run_id: every identity setting is in it, and runs written by bnstudy 0.1 keep theirs.

A run_id that ignored a setting would make a sweep with `--set epochs=10` find the old
5-epoch runs done; a run_id that changed would make every finished run pending again."""

import contextlib
import dataclasses
import json
import pickle
import typing
from pathlib import Path

import pytest

from bnstudy.config.settings import (BY_NAME, REQUIRED, SETTINGS, RunConfig, SettingError, _declared, applicable,
                                     from_record, setting)  # fmt: skip

BASE = RunConfig(variant="bn_before", lr=1e-3, batch_size=64, epochs=5)
FIXTURE_RUNS = Path(__file__).parents[1] / "fixtures" / "v0_1_study" / "runs"


def changed(setting) -> RunConfig:
    """BASE with `setting` at another value it allows there (tried in turn: the other
    choices, else numbers near BASE's, or 1000 for an unset limit)."""
    value = getattr(BASE, setting.name)
    if setting.choices:
        candidates = setting.choices
    elif value is None:
        candidates = (1000,)
    else:
        candidates = (value * 2, value + 1, value / 2, value + 2)  # + 2: a ghost batch size from 0 (1 is refused)
    for candidate in [c for c in map(setting.kind, candidates) if c != value]:
        with contextlib.suppress(SettingError):  # not allowed in BASE: try the next
            return dataclasses.replace(BASE, **{setting.name: candidate})
    pytest.fail(f"no other valid value of {setting.name} found from {value!r}; extend changed()")


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.identity], ids=lambda s: s.name)
def test_changing_any_one_identity_setting_changes_the_run_id(setting):
    config = changed(setting)
    assert config.run_id != BASE.run_id, f"{setting.name} = {getattr(config, setting.name)!r} kept BASE's run_id"


@pytest.mark.parametrize("runs", [FIXTURE_RUNS, FIXTURE_RUNS.parents[1] / "v0_2_study" / "runs"], ids=["0.1", "0.2"])
def test_runs_written_before_the_hash_grew_keep_their_run_ids_as_legacy_ids(runs):
    paths = sorted(runs.glob("*.json"))
    assert len(paths) in (2, 4)
    for path in paths:
        record = json.loads(path.read_text())
        config = from_record(record["config"], record["study"])
        assert config.legacy_run_id == record["run_id"] == path.stem
        # the same tags, the same hash, more of its digits
        assert config.run_id.startswith(config.legacy_run_id) and len(config.run_id) == len(path.stem) + 14


def test_two_runs_whose_6_digit_hashes_collide_have_distinct_run_ids():
    first, second = (RunConfig(variant="none", lr=lr, batch_size=128, limit_train=512, limit_test=256,
                               precise_bn_samples=256, seed=29, epochs=1) for lr in (0.001009, 0.001442))  # fmt: skip
    assert first.legacy_run_id == second.legacy_run_id and first.run_id != second.run_id  # issue 18's example


def test_many_runs_with_the_same_tags_have_distinct_run_ids():
    """n = 20,000 runs with the same tags (only such runs can share an id; 10^6 would take
    minutes here): n²/2 pairs, each sharing a hash of b bits with chance 2^-b, so the 6-digit
    hash gives about 12 pairs one id, and the 20-digit one a chance of 2e-16."""
    n = 20_000
    configs = [dataclasses.replace(BASE, lr=1e-3 * (1 + i / (4 * n))) for i in range(n)]
    assert len({config.run_id.rsplit("-", 1)[0] for config in configs}) == 1  # all lr1e-03
    assert len({config.run_id for config in configs}) == n
    assert len({config.legacy_run_id for config in configs}) < n  # the collisions of issue 18


def test_evals_per_epoch_is_tagged_and_bounded_by_the_steps_of_an_epoch():
    # 513 = 8 x 64 + 1: 8 steps an epoch, the lone last sample joining the eighth batch
    tiny = dict(variant="bn_before", lr=1e-3, batch_size=64, epochs=2, limit_train=513)
    assert "-k" not in RunConfig(**tiny).run_id
    assert "-s0-k8-" in RunConfig(**tiny, evals_per_epoch=8).run_id
    with pytest.raises(SettingError, match="at most the 8 training steps of an epoch"):
        RunConfig(**tiny, evals_per_epoch=9)
    with pytest.raises(SettingError, match="between 1 and 100"):
        RunConfig(**{**tiny, "limit_train": None}, evals_per_epoch=101)


def test_the_remedy_settings_are_tagged_and_left_out_of_the_hash_at_their_defaults():
    defaults = dict(norm="batch", pool="max", ghost_batch_size=0, frozen_bn_epochs=0)
    assert dataclasses.replace(BASE, **defaults).run_id == BASE.run_id
    assert all(not BY_NAME[name].hashed_at_default for name in defaults)
    tagged = dataclasses.replace(BASE, norm="batchrenorm", pool="avg", ghost_batch_size=32, frozen_bn_epochs=2)
    assert tagged.run_id.startswith("bn_before-brn-avgpool-gb32-fz2-adam-lr1e-03-bs64-s0-")
    assert [dataclasses.replace(BASE, norm=n).run_id.split("-")[1] for n in ("group", "layer")] == ["gn", "ln"]


def test_settings_that_do_not_apply_go_back_to_their_defaults_in_a_grid_point():
    ignored = dict(norm="group", bn_momentum=0.3, ghost_batch_size=32, frozen_bn_epochs=2, bn_impl="scratch")
    assert applicable({"variant": "none", **ignored}) == {"variant": "none", "norm": "batch", "bn_momentum": 0.1,
                                                          "ghost_batch_size": 0, "frozen_bn_epochs": 0,
                                                          "bn_impl": "scratch"}  # fmt: skip
    assert applicable({"variant": "bn_before", **ignored}) == {"variant": "bn_before", "norm": "group",
                                                               "bn_momentum": 0.1, "ghost_batch_size": 0,
                                                               "frozen_bn_epochs": 0, "bn_impl": "torch"}  # fmt: skip
    kept = dict(variant="bn_after", norm="batchrenorm", bn_momentum=0.3, ghost_batch_size=32, frozen_bn_epochs=2)
    assert applicable(kept) == kept
    # bn_impl only picks BatchNorm's code; `none` keeps its scratch runs (written before this rule)
    assert applicable({"variant": "bn_after", "norm": "batchrenorm", "bn_impl": "scratch"})["bn_impl"] == "torch"


def test_a_run_refuses_settings_that_do_not_apply_but_a_none_runs_old_bn_momentum():
    for setting, value in (("norm", "layer"), ("ghost_batch_size", 32), ("frozen_bn_epochs", 1)):
        with pytest.raises(SettingError, match=f"^{setting}: does not apply: variant none has no normalization"):
            dataclasses.replace(BASE, variant="none", **{setting: value})
    old = dataclasses.replace(BASE, variant="none", bn_momentum=0.01)  # bnstudy 0.1 wrote such runs: they load
    assert from_record(old.identity()).run_id == old.run_id and "-bnm0.01-" in old.run_id
    with pytest.raises(SettingError, match="^bn_momentum: does not apply: norm group keeps no running statistics"):
        dataclasses.replace(BASE, norm="group", bn_momentum=0.01)
    # group and layer normalise each sample alone: a batch of one is fine, a ghost batch is refused
    assert dataclasses.replace(BASE, norm="layer", batch_size=1).batch_size == 1
    with pytest.raises(SettingError, match="^batch_size: must be between 2"):
        dataclasses.replace(BASE, norm="batchrenorm", batch_size=1)


def test_each_fields_type_is_its_settings_kind():
    annotations = typing.get_type_hints(RunConfig)
    assert list(annotations) == [s.name for s in SETTINGS]  # declared once, in one order
    assert all(annotations[s.name] == (s.kind | None if s.optional else s.kind) for s in SETTINGS)
    assert (BY_NAME["lr"].kind, BY_NAME["lr"].optional) == (float, False)
    assert (BY_NAME["limit_train"].kind, BY_NAME["limit_train"].optional) == (int, True)
    assert [s.name for s in SETTINGS if s.default is REQUIRED] == ["variant", "lr", "batch_size", "epochs"]
    with pytest.raises(TypeError, match="no setting's type"):
        _declared(dataclasses.field(metadata=setting("a flag")), bool)


def test_a_run_config_pickles_as_worker_processes_and_dask_send_it():
    config = dataclasses.replace(BASE, activation="relu", limit_train=1000)
    copy = pickle.loads(pickle.dumps(config))
    assert type(copy) is RunConfig and copy == config and copy.run_id == config.run_id
