"""The sweep: the study lock between two sweeps, resume after SIGKILL, a dask cluster giving
the local results, failed runs, dry runs, status; and the scheduling helpers.

Real training on tiny slices of the real Fashion-MNIST (limit_train / limit_test, small
PreciseBN samples, 1-2 epochs), so that every test stays within seconds.
"""

import contextlib
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bnstudy import runner
from bnstudy.cli import main
from bnstudy.spec import RunConfig, load_study
from bnstudy.store import RunStore

TINY = """
name = "tiny"
epochs = {epochs}
limit_train = {limit_train}
limit_test = 200
precise_bn_samples = 64
batch_size = 32
[grid]
variant = ["none", "bn_before", "bn_after"]
lr = [1e-3]
seed = {seeds}
"""
TIMING_COLUMNS = {"train_seconds", "eval_seconds", "samples_per_second"}


def tiny_spec(tmp_path: Path, epochs: int = 1, limit_train: int = 256, seeds=(0, 1)) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(epochs=epochs, limit_train=limit_train, seeds=list(seeds)))
    return path


def sweep_command(spec: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "bnstudy", "sweep", str(spec), "--out", str(out), *flags]


def file_identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


def read_rows(store: RunStore) -> dict[str, list[dict]]:
    rows = {}
    for path in sorted(store.runs_dir.glob("*.csv")):
        with open(path) as f:
            rows[path.stem] = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)]
    return rows


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """In-process sweeps set one torch thread, as a worker does; give the others theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_concurrent_sweep_is_refused_and_a_killed_sweep_resumes_each_run_once(tmp_path):
    spec, out = tiny_spec(tmp_path, epochs=2, limit_train=512, seeds=range(3)), tmp_path / "out"
    store, configs = RunStore(out), load_study(spec).runs()
    first = subprocess.Popen(sweep_command(spec, out, "--jobs", "2"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        while not list(store.runs_dir.glob("*.json")) and first.poll() is None:
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGSTOP)  # freeze the driver and its workers mid-way
        second = subprocess.run(sweep_command(spec, out), capture_output=True, text=True, timeout=60)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and its workers, as a power cut would
        first.wait()
    assert second.returncode == 2
    assert second.stderr == (f"bnstudy: error: {out}: another sweep is writing this study (pid {first.pid}); "
                             "wait for it or stop it\n")  # fmt: skip
    done = [c.run_id for c in configs if store.is_done(c.run_id)]
    assert 1 <= len(done) < len(configs), "the sweep should have been killed mid-way"
    before = {p: file_identity(p) for run_id in done for p in (store.csv_path(run_id), store.json_path(run_id))}
    # What a kill between a run's two file moves leaves: a CSV, no JSON; and a truncated JSON.
    partial, truncated = [c.run_id for c in configs if c.run_id not in done][:2]
    store.csv_path(partial).write_text("run_id\n")
    store.json_path(truncated).write_text('{"status": "comp')

    resumed = subprocess.run(sweep_command(spec, out, "--jobs", "1"), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} already done, {len(configs) - len(done)} to run" in resumed.stdout
    assert f"{len(configs) - len(done)} runs in" in resumed.stdout
    assert all(store.state(c.run_id) == "complete" for c in configs)
    assert {p: file_identity(p) for p in before} == before  # done runs were not rewritten
    assert len(read_rows(store)[partial]) == 2
    assert json.loads(store.json_path(truncated).read_text())["epochs_done"] == 2
    assert not list(out.rglob("*.tmp"))


def test_a_dask_cluster_sweep_gives_the_local_rows(tmp_path):
    distributed = pytest.importorskip("distributed")
    spec = tiny_spec(tmp_path, seeds=(0,))
    local, remote = RunStore(tmp_path / "local"), RunStore(tmp_path / "dask")
    assert main(["sweep", str(spec), "--out", str(local.root), "--jobs", "1"]) == 0
    # Two threads in one worker: runs must not share torch's global RNG at the same time.
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster:
        argv = ["sweep", str(spec), "--backend", "dask", "--scheduler", cluster.scheduler_address, "--out"]
        assert main([*argv, str(remote.root)]) == 0
        # Workers find the dataset themselves; one that cannot fails its runs, not the sweep.
        assert main([*argv, str(tmp_path / "no-data"), "--data", str(tmp_path / "nowhere")]) == 1
    assert read_rows(remote) == read_rows(local) and len(read_rows(local)) == 3
    metadata = json.loads(next(remote.runs_dir.glob("*.json")).read_text())
    assert metadata["status"] == "complete" and metadata["device"] == "cpu"
    failures = [json.loads(p.read_text()) for p in (tmp_path / "no-data" / "runs").glob("*.json")]
    assert len(failures) == 3
    assert all(f["status"] == "failed" and "nowhere: no train-images" in f["error"] for f in failures)


def test_a_run_that_raises_is_failed_and_the_others_complete(tmp_path, monkeypatch, capsys):
    spec, out = tiny_spec(tmp_path), tmp_path / "out"
    real_fit = runner.fit

    def fit_failing_bn_after_seed_1(config, data, **kwargs):
        if (config.variant, config.seed) == ("bn_after", 1):
            raise RuntimeError("injected failure")
        return real_fit(config, data, **kwargs)

    monkeypatch.setattr(runner, "fit", fit_failing_bn_after_seed_1)
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 1
    printed = capsys.readouterr()
    store, configs = RunStore(out), load_study(spec).runs()
    failed = next(c for c in configs if (c.variant, c.seed) == ("bn_after", 1))
    assert [store.state(c.run_id) for c in configs].count("complete") == len(configs) - 1
    metadata = json.loads(store.json_path(failed.run_id).read_text())
    assert metadata["status"] == "failed" and metadata["error"].startswith("RuntimeError: injected failure")
    assert f"{failed.run_id}: RuntimeError: injected failure" in printed.out
    assert "5 complete, 0 diverged, 1 failed" in printed.out

    assert main(["status", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["all", "5", "0", "1", "0", "0", "6"]

    monkeypatch.setattr(runner, "fit", real_fit)
    done = {c.run_id: file_identity(store.json_path(c.run_id)) for c in configs if c is not failed}
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 0
    assert "1 runs in" in capsys.readouterr().out and store.state(failed.run_id) == "complete"
    assert {run_id: file_identity(store.json_path(run_id)) for run_id in done} == done


def test_dry_run_lists_the_runs_and_trains_nothing(tmp_path, monkeypatch, capsys):
    spec, out = tiny_spec(tmp_path), tmp_path / "out"
    monkeypatch.setattr(runner, "fit", lambda *args, **kwargs: pytest.fail("a dry run trained"))
    assert main(["sweep", str(spec), "--out", str(out), "--dry-run", "--jobs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines[:6]] == [["pending", c.run_id] for c in load_study(spec).runs()]
    assert "6 runs, 6 to run on cpu with 2 worker processes" in lines[6]
    assert lines[7].startswith("on this CPU: about ")
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--jobs", "0"], "--jobs: must be >= 1"),
    (["--backend", "dask"], "--backend dask needs --scheduler"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler is for --backend dask"),
    (["--backend", "dask", "--scheduler", "tcp://127.0.0.1:1"], "--scheduler tcp://127.0.0.1:1: cannot connect"),
    (["--data", "/nonexistent"], "/nonexistent: no train-images-idx3-ubyte"),
])  # fmt: skip
def test_bad_execution_flags_are_one_line_errors_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    with contextlib.ExitStack() as stack:
        if "--scheduler" in flags and "dask" in flags:
            dask = pytest.importorskip("dask")
            stack.enter_context(dask.config.set({"distributed.comm.timeouts.connect": "1s"}))
        assert main(["sweep", str(tiny_spec(tmp_path)), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnstudy: error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_tasks_are_one_run_each_on_cpu_and_one_shape_each_on_gpu_costliest_first():
    configs = [RunConfig(variant=v, lr=lr, batch_size=bs, epochs=2, seed=s)
               for v in ("none", "bn_after") for bs in (32, 1024) for lr in (1e-3, 1e-2) for s in (0, 1)]  # fmt: skip
    solo = runner.make_tasks(configs, grouped=False)
    assert sorted(len(t) for t in solo) == [1] * 16
    costs = [runner.estimate_seconds(t[0]) for t in solo]
    assert costs == sorted(costs, reverse=True)
    groups = runner.make_tasks(configs, grouped=True)
    assert sorted(len(t) for t in groups) == [4] * 4
    assert all(len({(c.variant, c.batch_size) for c in t}) == 1 for t in groups)


def test_estimates_grow_with_the_work_and_the_eta_follows_the_finished_runs():
    small = RunConfig(variant="bn_before", lr=1e-3, batch_size=256, epochs=2, limit_train=10_000)
    large = RunConfig(variant="bn_before", lr=1e-3, batch_size=256, epochs=4, limit_train=20_000)
    assert 0 < runner.estimate_seconds(small) < runner.estimate_seconds(large)
    assert runner.estimate_seconds(dataclasses.replace(small, batch_size=32)) > runner.estimate_seconds(small)
    predicted = runner.estimate_seconds(small)
    eta = runner.Eta([small, small, small], workers=2)
    assert eta.seconds() == pytest.approx(3 * predicted / 2)
    eta.finished(small, [{"train_seconds": predicted, "eval_seconds": 0.0}] * 2)  # took twice the prediction
    assert eta.seconds() == pytest.approx(2 * (2 * predicted) / 2)


@pytest.mark.parametrize("gpus, jobs, slots", [(1, None, ("cuda",)), (4, None, ("cuda:0", "cuda:1", "cuda:2", "cuda:3")),
                                               (4, 2, ("cuda:0", "cuda:1"))])  # fmt: skip
def test_one_gpu_runs_in_process_and_several_get_one_worker_each(monkeypatch, gpus, jobs, slots):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    execution = runner.plan_execution("local", None, "auto", jobs)
    assert (execution.device, execution.slots, execution.grouped) == ("cuda", slots, True)
    assert not runner.plan_execution("local", None, "auto", jobs, fuse=False).grouped  # --no-fuse
    assert runner.plan_execution("local", None, "cpu", 3).slots == ("cpu",) * 3


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


def test_fused_rows_count_their_group_time_once():
    rows = [{"train_seconds": 3.0, "eval_seconds": 1.0}] * 2
    assert runner.own_seconds(rows) == 8.0 and runner.own_seconds(rows, group_size=4) == 2.0
