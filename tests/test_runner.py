"""Executing runs: a shape's runs train in fused chunks that match their solo runs, and a
group that raises fails every member."""

import pytest

from bnstudy import runner
from bnstudy.spec import RunConfig


def test_a_group_trains_in_fused_chunks_that_match_solo_runs(monkeypatch):
    """The GPU path, on the CPU: chunks of max_group_size go through fit_group, a chunk of
    one trains solo, and every member's rows match its solo run."""
    data = runner.worker_dataset(None, "cpu", 256, 200)
    configs = [RunConfig(variant="bn_before", lr=lr, batch_size=32, epochs=2, seed=s, limit_train=256, limit_test=200,
                         precise_bn_samples=64) for s, lr in ((0, 1e-3), (1, 1e-2), (2, 3e-3))]  # fmt: skip
    monkeypatch.setattr(runner, "max_group_size", lambda device, batch_size: 2)
    results = runner.run_group(configs, data)
    assert [meta["group_size"] for _, meta in results] == [2, 2, 1]
    assert [meta["run_id"] for _, meta in results] == [c.run_id for c in configs]
    for config, (rows, meta) in zip(configs, results):
        solo_rows, _ = runner.execute(config, data)
        assert meta["status"] == "complete" and len(rows) == 2
        for row, solo in zip(rows, solo_rows):
            assert row["train_loss"] == pytest.approx(solo["train_loss"], rel=1e-3)
            assert row["test_acc"] == pytest.approx(solo["test_acc"], abs=3 / 200)


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
