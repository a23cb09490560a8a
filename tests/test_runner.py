"""Executing runs: a shape's runs train in fused chunks that match their solo runs, their
points travel with each run's metadata, and a group that raises fails every member."""

import pytest

from bnstudy import runner
from bnstudy.spec import RunConfig
from bnstudy.store import EVALS_FIELD


def test_a_group_trains_in_fused_chunks_that_match_solo_runs(monkeypatch):
    """The GPU path, on the CPU: chunks of max_group_size go through fit_group, a chunk of
    one trains solo, and every member's rows and points (2 an epoch: 256 images in batches
    of 32 are 8 steps, so after steps 4 and 8) match its solo run."""
    data = runner.worker_dataset(None, "cpu", 256, 200)
    configs = [RunConfig(variant="bn_before", lr=lr, batch_size=32, epochs=2, seed=s, limit_train=256, limit_test=200,
                         precise_bn_samples=64, evals_per_epoch=2) for s, lr in ((0, 1e-3), (1, 1e-2), (2, 3e-3))]  # fmt: skip
    monkeypatch.setattr(runner, "max_group_size", lambda device, batch_size: 2)
    results = runner.run_group(configs, data)
    assert [meta["group_size"] for _, meta in results] == [2, 2, 1]
    assert [meta["run_id"] for _, meta in results] == [c.run_id for c in configs]
    for config, (rows, meta) in zip(configs, results):
        solo_rows, solo_meta = runner.execute(config, data)
        assert meta["status"] == "complete" and len(rows) == 2
        for row, solo in zip(rows, solo_rows):
            assert row["train_loss"] == pytest.approx(solo["train_loss"], rel=1e-3)
            assert row["test_acc"] == pytest.approx(solo["test_acc"], abs=3 / 200)
        points, solo_points = meta[EVALS_FIELD], solo_meta[EVALS_FIELD]
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

    rows, meta = runner.execute(config, data, on_epoch=fail_after_the_second_epoch)
    assert meta["status"] == "failed" and meta["error"].startswith("RuntimeError: injected")
    assert [r["epoch"] for r in rows] == [1, 2] and meta["epochs_done"] == 2
    assert [(p["epoch"], p["step"]) for p in meta[EVALS_FIELD]] == [(1, 4), (1, 8), (2, 12), (2, 16)]


def test_a_group_that_raises_fails_every_member(monkeypatch):
    data = runner.worker_dataset(None, "cpu", 256, 200)
    configs = [RunConfig(variant="none", lr=1e-3, batch_size=32, epochs=1, seed=s, limit_train=256, limit_test=200)
               for s in (0, 1)]  # fmt: skip

    def out_of_memory(configs, data):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(runner, "fit_group", out_of_memory)
    results = runner.execute_group(configs, data)
    assert [meta["status"] for _, meta in results] == ["failed", "failed"]
    assert all("CUDA out of memory" in meta["error"] and rows == [] for rows, meta in results)
