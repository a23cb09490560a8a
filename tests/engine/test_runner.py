"""Executing runs: a shape's runs train in fused chunks that match their solo runs, their
points travel in each run's outcome, and a run, a group or a worker that raises fails its
runs with the error, keeping what they finished."""

import pickle

import pytest

from bnstudy.engine import runner
from bnstudy.results.runfiles import RunOutcome, RunStatus
from bnstudy.config.spec import RunConfig


def test_a_group_trains_in_fused_chunks_that_match_solo_runs(monkeypatch):
    """The GPU path, on the CPU: chunks of max_group_size go through fit_group, a chunk of
    one trains solo, and every member's rows and points (2 an epoch: 256 images in batches
    of 32 are 8 steps, so after steps 4 and 8) match its solo run."""
    data = runner.worker_dataset(None, "cpu", 256, 200)
    configs = [RunConfig(variant="bn_before", lr=lr, batch_size=32, epochs=2, seed=s, limit_train=256, limit_test=200,
                         precise_bn_samples=64, evals_per_epoch=2)
               for s, lr in ((0, 1e-3), (1, 1e-2), (2, 3e-3))]  # fmt: skip
    monkeypatch.setattr(runner, "max_group_size", lambda device, batch_size: 2)
    results = runner.run_group(configs, data)
    assert [outcome.metadata["group_size"] for outcome in results] == [2, 2, 1]
    assert [outcome.metadata["run_id"] for outcome in results] == [c.run_id for c in configs]
    for config, outcome in zip(configs, results):
        solo = runner.execute(config, data)
        assert outcome.status is RunStatus.COMPLETE and len(outcome.rows) == 2
        for row, solo_row in zip(outcome.rows, solo.rows):
            assert row["train_loss"] == pytest.approx(solo_row["train_loss"], rel=1e-3)
            assert row["test_acc"] == pytest.approx(solo_row["test_acc"], abs=3 / 200)
        points, solo_points = outcome.points, solo.points
        assert [(p["run_id"], p["step"]) for p in points] == [(config.run_id, step) for step in (4, 8, 12, 16)]
        assert [p["step"] for p in solo_points] == [4, 8, 12, 16]
        for point, solo in zip(points, solo_points):
            assert point["test_acc"] == pytest.approx(solo["test_acc"], abs=3 / 200)
            assert point["test_acc_precise_bn"] == pytest.approx(solo["test_acc_precise_bn"], abs=3 / 200)


def test_a_run_that_raises_keeps_the_rows_and_points_of_its_finished_epochs():
    data = runner.worker_dataset(None, "cpu", 256, 200)
    config = RunConfig(variant="none", lr=1e-3, batch_size=32, epochs=3, limit_train=256, limit_test=200,
                       evals_per_epoch=2)  # fmt: skip

    def fail_after_the_second_epoch(row: dict) -> None:
        if row["epoch"] == 2:
            raise RuntimeError("injected")

    outcome = runner.execute(config, data, on_epoch=fail_after_the_second_epoch)
    meta = outcome.metadata
    assert outcome.status is RunStatus.FAILED and meta["error"].startswith("RuntimeError: injected")
    assert [r["epoch"] for r in outcome.rows] == [1, 2] and meta["epochs_done"] == 2
    assert [(p["epoch"], p["step"]) for p in outcome.points] == [(1, 4), (1, 8), (2, 12), (2, 16)]
    assert "evals" not in meta and meta["status"] == "failed"  # the JSON's own text, not an enum
    assert pickle.loads(pickle.dumps(outcome)) == outcome  # as it crosses to the driver


def test_a_group_that_raises_fails_every_member(monkeypatch):
    data = runner.worker_dataset(None, "cpu", 256, 200)
    configs = [RunConfig(variant="none", lr=1e-3, batch_size=32, epochs=1, seed=s, limit_train=256, limit_test=200)
               for s in (0, 1)]  # fmt: skip

    def out_of_memory(configs, data):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(runner, "fit_group", out_of_memory)
    results = runner.execute_group(configs, data)
    assert [outcome.status for outcome in results] == [RunStatus.FAILED] * 2
    assert all("CUDA out of memory" in o.metadata["error"] and o.rows == [] == o.points for o in results)
    assert [o.metadata["group_size"] for o in results] == [2, 2]


def test_a_worker_that_cannot_set_up_fails_its_runs(tmp_path):
    configs = [RunConfig(variant="none", lr=1e-3, batch_size=32, epochs=1, seed=s, limit_train=256, limit_test=200)
               for s in (0, 1)]  # fmt: skip
    results = runner.worker_task(configs, "cpu", data_dir=str(tmp_path / "nowhere"))
    assert all(isinstance(o, RunOutcome) and o.status is RunStatus.FAILED and o.rows == [] for o in results)
    assert [o.metadata["run_id"] for o in results] == [c.run_id for c in configs]
    assert all("nowhere" in o.metadata["error"] and o.metadata["device"] == "cpu" for o in results)
