"""The sweep: the study lock between two sweeps, resume after SIGKILL, a dask cluster giving
the local results, failed runs, dry runs, status; and how runs are cut into tasks.

Real training on tiny slices of the real Fashion-MNIST (limit_train / limit_test, small
PreciseBN samples, 1-2 epochs), so that every test stays within seconds.
"""

import contextlib
import dataclasses
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import studies
import torch

import bnstudy
from bnstudy.engine import runner
from bnstudy.sweep.costs import estimate_seconds
from bnstudy.cli import main
from bnstudy.config.spec import RunConfig, load_study
from bnstudy.errors import UserError
from bnstudy.results.runfiles import RunCheck, RunState, RunStatus
from bnstudy.results.store import RunStore, check_no_links
from bnstudy.sweep.driver import make_tasks, vet
from bnstudy.engine.train import RunResult

TIMING_COLUMNS = {"train_seconds", "eval_seconds", "samples_per_second"}


def tiny_spec(tmp_path: Path, epochs: int = 1, limit_train: int = 256, seeds=(0, 1)) -> Path:
    path = tmp_path / "tiny.toml"
    grid = f'variant = ["none", "bn_before", "bn_after"]\nseed = {list(seeds)}\n'
    path.write_text(studies.tiny_spec("tiny", grid, epochs=epochs, limit_train=limit_train, batch_size=32))
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


# `python -c FREEZE_AFTER_TWO_RUNS MARKER ARGS...` is `bnstudy ARGS...` with the driver's
# RunStore.write_run wrapped (test-only: nothing in bnstudy knows of it): once its second run
# is written, it touches MARKER and sleeps, holding the study lock, until the test kills it.
# So the sweep is caught mid-way with exactly two runs done, however fast or slow the runs.
FREEZE_AFTER_TWO_RUNS = """
import os, sys, time
from pathlib import Path
from bnstudy.cli import main
from bnstudy.errors import UserError
from bnstudy.results.store import RunStore, check_no_links

marker, argv = Path(sys.argv[1]), sys.argv[2:]
write_run, written = RunStore.write_run, []

def write_run_then_freeze(self, outcome):
    paths = write_run(self, outcome)
    written.append(outcome.metadata["run_id"])
    if len(written) == 2:
        marker.touch()
        time.sleep(600)  # the test kills it long before
        os._exit(1)  # never outlive a test that died without killing it
    return paths

RunStore.write_run = write_run_then_freeze
sys.exit(main(argv))
"""


def test_a_concurrent_sweep_is_refused_and_a_killed_sweep_resumes_each_run_once(tmp_path):
    spec, out, marker = tiny_spec(tmp_path, epochs=2), tmp_path / "out", tmp_path / "frozen"
    store, configs = RunStore(out), load_study(spec).runs()
    frozen_sweep = [sys.executable, "-c", FREEZE_AFTER_TWO_RUNS, marker, "sweep", spec, "--out", out, "--jobs", "2"]
    first = subprocess.Popen(frozen_sweep, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert first.poll() is None, "the sweep ended before its second run was written"
            assert time.monotonic() < deadline, "the sweep wrote no second run in 300 s"
            time.sleep(0.05)
        second = subprocess.run(sweep_command(spec, out), capture_output=True, text=True, timeout=60)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and its workers, as a power cut would
        first.wait()
    assert second.returncode == 2
    assert second.stderr == (f"bnstudy: error: {out}: another sweep is writing this study (pid {first.pid}); "
                             "wait for it or stop it\n")  # fmt: skip
    done = [c.run_id for c in configs if store.state(c.run_id).is_done()]
    assert len(done) == 2
    before = {p: file_identity(p) for run_id in done for p in (store.csv_path(run_id), store.json_path(run_id))}
    # What a kill between a run's two file moves leaves: a CSV, no JSON; and a truncated JSON.
    partial, truncated = [c.run_id for c in configs if c.run_id not in done][:2]
    store.csv_path(partial).write_text("run_id\n")
    store.json_path(truncated).write_text('{"status": "comp')

    resumed = subprocess.run(sweep_command(spec, out, "--jobs", "1"), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"2 already done, {len(configs) - 2} to run" in resumed.stdout
    assert f"{len(configs) - 2} runs in" in resumed.stdout
    assert all(store.state(c.run_id) == "complete" for c in configs)
    assert {p: file_identity(p) for p in before} == before  # done runs were not rewritten
    assert len(read_rows(store)[partial]) == 2
    assert json.loads(store.json_path(truncated).read_text())["epochs_done"] == 2
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("kind", ["symlink", "folder"])
def test_a_lock_that_is_not_a_plain_file_is_one_line_and_nothing_is_written_through_it(tmp_path, capsys, kind):
    spec, out, target = tiny_spec(tmp_path), tmp_path / "out", tmp_path / "precious.txt"
    target.write_text("precious\n")
    out.mkdir()
    if kind == "symlink":
        (out / ".lock").symlink_to(target)
    else:
        (out / ".lock").mkdir()
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bnstudy: error: {out / '.lock'}: cannot use it as the study's lock") and "remove it" in err
    assert err.count("\n") == 1, err
    assert target.read_text() == "precious\n"
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no spec, no runs


def test_a_folder_where_the_spec_copy_goes_is_one_line_before_any_run(tmp_path, capsys, monkeypatch):
    spec, out = tiny_spec(tmp_path), tmp_path / "out"
    (out / "spec.toml").mkdir(parents=True)
    monkeypatch.setattr(runner, "fit", lambda *args, **kwargs: pytest.fail("a run trained"))
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"bnstudy: error: {out}: cannot write results (Is a directory)\n"
    assert not list(out.rglob("*.tmp")) and not (out / "runs").exists()


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


def test_a_sweep_writes_each_runs_points_beside_its_csv(tmp_path):
    spec = tiny_spec(tmp_path, epochs=2, seeds=(0,))  # 256 images in batches of 32: 8 steps an epoch
    spec.write_text(spec.read_text().replace("[grid]", "evals_per_epoch = 2\n[grid]"))
    store = RunStore(tmp_path / "out")
    assert main(["sweep", str(spec), "--out", str(store.root), "--jobs", "1"]) == 0
    configs = load_study(spec).runs()
    assert len(configs) == 3 and all(c.evals_per_epoch == 2 for c in configs)
    for config in configs:
        assert store.state(config.run_id) == "complete"
        with open(store.evals_path(config.run_id)) as f:
            steps = [(p["run_id"], p["step"]) for p in csv.DictReader(f)]
        assert steps == [(config.run_id, s) for s in "4 8 12 16".split()]
        assert "evals" not in json.loads(store.json_path(config.run_id).read_text())


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
    assert "1 run in" in capsys.readouterr().out and store.state(failed.run_id) == "complete"
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
    (["--jobs", "0"], "--jobs: must be between 1 and 1024 (got 0)"),
    (["--jobs", str(2**64)], f"--jobs: must be between 1 and 1024 (got {2**64})"),
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
    solo = make_tasks(configs, grouped=False)
    assert sorted(len(t) for t in solo) == [1] * 16
    costs = [estimate_seconds(t[0]) for t in solo]
    assert costs == sorted(costs, reverse=True)
    groups = make_tasks(configs, grouped=True)
    assert sorted(len(t) for t in groups) == [4] * 4
    assert all(len({(c.variant, c.batch_size) for c in t}) == 1 for t in groups)


# ---------------------------------------------------------------- what a worker may not decide
def tampered_worker(monkeypatch, tamper) -> None:
    """The sweep's task function becomes the real worker_task followed by
    `tamper(config, metadata)` on each outcome's metadata it returns, as a rogue or
    mismatched worker would send it back."""
    real = runner.worker_task

    def worker_task(configs, device, data_dir=None):
        results = real(configs, device, data_dir)
        for config, outcome in zip(configs, results):
            tamper(config, outcome.metadata)
        return results

    monkeypatch.setattr(runner, "worker_task", worker_task)


def test_a_workers_result_never_decides_where_the_driver_writes(tmp_path, monkeypatch, capsys):
    spec, out = tiny_spec(tmp_path, seeds=(0,)), tmp_path / "a" / "b" / "out"
    configs = {c.variant: c for c in load_study(spec).runs()}

    def tamper(config, metadata):
        if config.variant == "bn_before":  # a path out of the results folder
            metadata["run_id"] = "../../../../elsewhere/EVIL"
        elif config.variant == "bn_after":  # a worker whose bn_momentum default is 0.2: its config and id
            other = dataclasses.replace(config, bn_momentum=0.2)
            metadata.update(run_id=other.run_id, config=other.identity())

    tampered_worker(monkeypatch, tamper)
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 1
    printed = capsys.readouterr().out
    assert not (tmp_path / "elsewhere").exists()
    store = RunStore(out)
    assert sorted(p.name for p in store.runs_dir.iterdir()) == sorted(
        f"{c.run_id}{suffix}" for c in configs.values() for suffix in (".csv", ".json"))
    states = [store.state(configs[v].run_id) for v in ("none", "bn_before", "bn_after")]
    assert states == ["complete", "failed", "failed"]
    evil, other = (json.loads(store.json_path(configs[v].run_id).read_text()) for v in ("bn_before", "bn_after"))
    assert evil["run_id"] == configs["bn_before"].run_id and evil["config"] == configs["bn_before"].identity()
    assert evil["error"].startswith("the worker's result was refused: it is for run '../../../../elsewhere/EVIL'")
    assert other["error"].startswith("the worker's result was refused: it is for run ")
    assert f"{configs['bn_before'].run_id}: the worker's result was refused" in printed


def test_a_result_with_this_runs_id_but_another_config_is_refused(tmp_path, monkeypatch):
    spec, out = tiny_spec(tmp_path, seeds=(0,)), tmp_path / "out"
    tampered_worker(monkeypatch, lambda config, metadata: metadata["config"].update(bn_momentum=0.2))
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 1
    store = RunStore(out)
    for config in load_study(spec).runs():
        metadata = json.loads(store.json_path(config.run_id).read_text())
        assert metadata["status"] == "failed" and metadata["config"] == config.identity()
        assert metadata["error"].startswith("the worker's result was refused: its config has bn_momentum 0.2, not 0.1")


def test_a_result_whose_files_do_not_check_out_is_rewritten_as_the_run_failed(tmp_path, monkeypatch):
    spec, out = tiny_spec(tmp_path, seeds=(0,)), tmp_path / "out"
    tampered_worker(monkeypatch, lambda config, metadata: metadata.update(epochs_done=5))  # of 1 epoch
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 1
    store = RunStore(out)
    for config in load_study(spec).runs():
        check = store.check(config)
        assert check.state is RunState.FAILED and check.metadata["epochs_done"] == 0
        assert check.metadata["error"].startswith("the worker's result does not check out")


@pytest.mark.parametrize("field, value", [("bnstudy_version", "0.0.9"), ("git_commit", "0" * 40)])
def test_a_worker_on_another_version_or_commit_fails_its_runs_unless_allowed(tmp_path, monkeypatch, capsys, field,
                                                                             value):  # fmt: skip
    spec, out = tiny_spec(tmp_path, seeds=(0,)), tmp_path / "out"
    tampered_worker(monkeypatch, lambda config, metadata: metadata.update({field: value}))
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 1
    store, configs = RunStore(out), load_study(spec).runs()
    errors = [json.loads(store.json_path(c.run_id).read_text())["error"] for c in configs]
    driver = f"{bnstudy.__version__} ({runner.git_commit() or 'no git commit'})"
    shown = {"bnstudy_version": f"bnstudy {value} ({runner.git_commit() or 'no git commit'})",
             "git_commit": f"bnstudy {bnstudy.__version__} ({value})"}[field]  # fmt: skip
    expected = f"the worker's result was refused: worker runs {shown}, driver {driver}"
    assert all(e.startswith(expected) for e in errors), (errors, expected)
    assert "--allow-mixed-workers" in errors[0]
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1", "--allow-mixed-workers"]) == 0
    assert [store.state(c.run_id) for c in configs] == ["complete"] * 3
    assert {json.loads(store.json_path(c.run_id).read_text())[field] for c in configs} == {value}


@pytest.mark.parametrize("mark", ["-dirty", ""])
def test_a_worker_whose_checkout_differs_only_in_its_dirty_mark_is_the_drivers(tmp_path, monkeypatch, mark):
    """Editing a file while a sweep runs makes `git status` dirty for the workers started
    later: their runs are still this code's (driver.same_code)."""
    spec, out = tiny_spec(tmp_path, seeds=(0,)), tmp_path / "out"
    commit = (runner.git_commit() or "0" * 40).removesuffix("-dirty")
    monkeypatch.setattr(runner, "git_commit", lambda: commit + ("" if mark else "-dirty"))  # the driver's
    tampered_worker(monkeypatch, lambda config, metadata: metadata.update({"git_commit": commit + mark}))
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 0


def test_a_task_whose_worker_returns_no_result_fails_its_runs(tmp_path, monkeypatch):
    spec, out = tiny_spec(tmp_path, seeds=(0,)), tmp_path / "out"
    monkeypatch.setattr(runner, "worker_task", lambda configs, device, data_dir=None: [])
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 1
    store = RunStore(out)
    errors = {json.loads(store.json_path(c.run_id).read_text())["error"] for c in load_study(spec).runs()}
    assert errors == {"the worker returned 0 results for a task of 1 run"}


def test_the_driver_writes_only_a_run_outcome_of_its_own_run():
    config = RunConfig(variant="bn_before", lr=1e-3, batch_size=64, epochs=2, seed=0)
    rows = studies.hand_rows(config, [0.5, 0.6])
    good = runner.run_outcome(config, "cpu", runner.now(), RunResult(rows=rows))
    refused = {
        "a (rows, metadata) pair": (good.rows, good.metadata),
        "a status of no run": dataclasses.replace(good, metadata=good.metadata | {"status": "done"}),
        "points without their columns": dataclasses.replace(good, points=[{"epoch": 1}]),
        "points of another kind": dataclasses.replace(good, points=None),
        "rows of another kind": dataclasses.replace(good, rows=tuple(good.rows)),
    }
    assert vet([config], [good], "cpu") == [good]
    for what, result in refused.items():
        (outcome,) = vet([config], [result], "cpu")
        assert outcome.status is RunStatus.FAILED and outcome.rows == [] == outcome.points, what
        assert outcome.metadata["run_id"] == config.run_id and outcome.metadata["config"] == config.identity(), what


def test_a_sweep_checks_each_runs_files_once_at_its_start(tmp_path, monkeypatch, capsys):
    """One check per run sets the damaged ones aside and tells done from pending; the
    only other check is of the one run written (driver.record)."""
    spec, out = tiny_spec(tmp_path, seeds=(0,)), tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 0
    store, configs = RunStore(out), load_study(spec).runs()
    store.csv_path(configs[0].run_id).write_text("")  # damaged
    checked, check, read = [], RunStore.check, RunStore._check  # _check: the one reader of a run's files
    monkeypatch.setattr(RunStore, "_check", lambda self, run_id: checked.append(run_id) or read(self, run_id))
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 0
    said = f"1 run set aside in {store.damaged_dir}, to be redone:\n  {configs[0].run_id}: empty CSV"
    assert said in capsys.readouterr().out
    assert sorted(checked) == sorted([c.run_id for c in configs] + [configs[0].run_id])
    assert [check(store, c.run_id).state for c in configs] == [RunState.COMPLETE] * 3


# ---------------------------------------------------------------- links inside a study folder
@pytest.mark.parametrize("name", ["runs", "damaged", "figures", ".reports"])
@pytest.mark.parametrize("command", ["sweep", "dry run", "status"])
def test_a_study_folder_whose_runs_damaged_or_figures_is_a_link_is_refused(tmp_path, capsys, monkeypatch, name,
                                                                            command):  # fmt: skip
    spec, out, elsewhere = tiny_spec(tmp_path, seeds=(0,)), tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".x.csv.abc.tmp").write_text("what a sweep would delete as a stale temporary\n")
    out.mkdir()
    (out / name).symlink_to(elsewhere)
    monkeypatch.setattr(runner, "fit", lambda *args, **kwargs: pytest.fail("a run trained"))
    argv = {"sweep": ["sweep", str(spec), "--out", str(out), "--jobs", "1"],
            "dry run": ["sweep", str(spec), "--out", str(out), "--dry-run"],
            "status": ["status", str(spec), "--out", str(out)]}[command]  # fmt: skip
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"bnstudy: error: {out / name}: a symbolic link; a study's runs/, damaged/, figures/ and "
                   ".reports/ must be its own folders (bnstudy writes, moves and deletes in them, never through a "
                   "link)\n")  # fmt: skip
    assert {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")} == before


def test_the_store_never_deletes_or_moves_through_a_link(tmp_path):
    store, elsewhere = RunStore(tmp_path / "out"), tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".x.csv.abc.tmp").write_text("not a stale temporary of this study\n")
    store.root.mkdir()
    store.runs_dir.symlink_to(elsewhere)
    damaged = {load_study(tiny_spec(tmp_path)).runs()[0]: ("x", RunCheck(RunState.DAMAGED, "empty CSV"))}
    for act in (store.remove_stale_temps, lambda: store.set_aside_unusable(damaged), lambda: store.lock().__enter__(),
                lambda: check_no_links(store.root)):  # fmt: skip
        with pytest.raises(UserError, match="a symbolic link"):
            act()
    assert [p.name for p in elsewhere.iterdir()] == [".x.csv.abc.tmp"]


def test_a_sweep_removes_stale_temporaries_and_counts_what_was_done_in_words(tmp_path, capsys):
    spec, out = tiny_spec(tmp_path, seeds=(0,)), tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1", "--set", "grid.variant=['none']"]) == 0
    capsys.readouterr()
    stale = [out / "runs" / ".none-x.csv.abc123.tmp", out / ".spec.toml.def456.tmp"]  # left by a killed writer
    for path in stale:
        path.write_text("half a file")
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert not any(path.exists() for path in stale)
    assert "tiny: 2 runs in " in printed and "; 1 was already done" in printed
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1", "--set", "grid.variant=['none']"]) == 0
    assert "tiny: nothing to run, the 1 run is done" in capsys.readouterr().out
