"""Where runs execute. First the contract every backend keeps, one test body set run on
every backend of the registry (bnstudy.sweep.backends.BACKENDS) and on a toy backend this file
defines and registers in one line: every task's result arrives and is written; a task whose
function raises fails its runs alone; Ctrl-C stops the sweep with its one line, keeping the
finished runs; a dead worker (where a backend has workers of its own) neither hangs the
sweep nor loses a finished run; a second sweep redoes nothing. What only one backend does
is in tests/sweep/backends/test_<module>.py (local workers' slots and signals, an address
where no dask scheduler answers).

The contract's sweeps train tiny real runs (studies.TINY_SETTINGS, one epoch); the task
function is the sweep's own (runner.worker_task), swapped for one that raises or dies on one
run where a test says so.
"""

import contextlib
import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Callable

import pytest
from studies import tiny_spec

from bnstudy.sweep import backends
from bnstudy.engine import runner
from bnstudy.sweep.backends import BACKENDS
from bnstudy.cli import main
from bnstudy.engine.runner import worker_task
from bnstudy.config.spec import load_study
from bnstudy.results.store import RunStore

INTERRUPTED = "bnstudy: interrupted; finished runs are kept, the rest will be redone"


# ---------------------------------------------------------------- the contract: a toy backend
@dataclasses.dataclass(frozen=True)
class ToyOptions:
    toy_reverse: bool = False


@dataclasses.dataclass(frozen=True)
class Toy(backends.Backend):
    """A backend of this file's own: this process runs the tasks, the last one first when
    asked (--toy-reverse), so that results arrive in another order than the tasks'."""

    summary = "this test's toy backend"
    Options = ToyOptions
    device: str
    reverse: bool
    fuse: bool = True
    local_workers = 1

    @classmethod
    def add_flags(cls, group) -> None:
        group.add_argument("--toy-reverse", action="store_true", help="run the last task first")

    @classmethod
    def plan(cls, options: ToyOptions, device: str, fuse: bool) -> "Toy":
        return cls(backends.resolve_device(device).type, options.toy_reverse, fuse)

    def describe(self) -> str:
        return f"{self.device} in the toy backend"

    @contextlib.contextmanager
    def open(self, task_fn):
        def run(tasks):
            order = range(len(tasks) - 1, -1, -1) if self.reverse else range(len(tasks))
            return ((i, backends.call_task(task_fn, tasks[i], self.device, "in the toy")) for i in order)

        yield run, 1


# ---------------------------------------------------------------- the contract: each backend's setup
CONTRACT_SPEC = tiny_spec("contract", 'variant = ["none", "bn_before"]\nseed = [0, 1]\n', epochs=1)
FAILING = ("bn_before", 1)  # (variant, seed) of the run whose task raises, or whose worker dies


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the contract needs of one backend: the flags of a sweep on it (given the test's
    request, for fixtures), and a context yielding the flags of a sweep whose workers are
    processes that may die, or why it has none."""

    flags: Callable[[pytest.FixtureRequest], list[str]]
    mortal: Callable[[], contextlib.AbstractContextManager] | str


@contextlib.contextmanager
def dask_worker_processes():
    """A LocalCluster of two worker processes, each with a nanny, which restarts it when it
    dies; its scheduler gives a task up the first time its worker dies (allowed-failures 0,
    not 3: the task fails rather than kill three more workers)."""
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:  # fmt: skip
        yield ["--scheduler", cluster.scheduler_address]


SETUPS = {
    "local": Setup(lambda request: ["--jobs", "2"], lambda: contextlib.nullcontext(["--jobs", "2"])),
    "inprocess": Setup(lambda request: [], "its one worker is the sweep's own process"),
    "dask": Setup(lambda request: ["--scheduler", request.getfixturevalue("dask_threads")], dask_worker_processes),
    "toy": Setup(lambda request: ["--toy-reverse"], "its one worker is the sweep's own process"),
}


@pytest.fixture(scope="module")
def dask_threads():
    """A LocalCluster of two one-thread workers in this process (cheap: no process to start);
    yields its address."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:  # fmt: skip
        yield cluster.scheduler_address


@pytest.fixture(params=[*BACKENDS, "toy"])
def backend(request, monkeypatch) -> str:
    """The name of each registered backend, then the toy's, registered here in one line."""
    if request.param == "toy":
        monkeypatch.setitem(BACKENDS, "toy", Toy)
    return request.param


@pytest.fixture
def study(tmp_path):
    """(argv of a sweep of CONTRACT_SPEC into tmp_path/out, the store, the study's runs)."""
    spec = tmp_path / "contract.toml"
    spec.write_text(CONTRACT_SPEC)
    store = RunStore(tmp_path / "out")
    return ["sweep", str(spec), "--out", str(store.root), "--device", "cpu"], store, load_study(spec).runs()


def sweep_on(backend: str, request, study, flags=None) -> list[str]:
    """The argv of a sweep of `study` on `backend`: with its SETUPS flags, or `flags`. (A
    backend registered without a setup here is a KeyError: the contract runs on every one.)"""
    argv, _, _ = study
    return [*argv, "--backend", backend, *(SETUPS[backend].flags(request) if flags is None else flags)]


def states(study) -> dict[str, str]:
    _, store, configs = study
    return {config.run_id: store.state(config.run_id) for config in configs}


def failing_run(study):
    """The RunConfig of run FAILING."""
    return next(config for config in study[2] if (config.variant, config.seed) == FAILING)


def raising_task(task, device, data_dir=None):
    """The sweep's task function, but the task holding run FAILING raises."""
    if any((config.variant, config.seed) == FAILING for config in task):
        raise RuntimeError("injected failure")
    return worker_task(task, device, data_dir)


def dying_task(task, device, data_dir=None):
    """The sweep's task function, but the worker process running run FAILING dies (SIGKILL,
    as the OOM killer kills) the first time, which the file $BNSTUDY_TEST_DIED then records."""
    died = Path(os.environ["BNSTUDY_TEST_DIED"])
    if any((config.variant, config.seed) == FAILING for config in task) and not died.exists():
        died.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return worker_task(task, device, data_dir)


def file_identity(path: Path) -> tuple[int, int]:
    return path.stat().st_ino, path.stat().st_mtime_ns


# ---------------------------------------------------------------- the contract
def test_every_result_arrives_and_a_second_sweep_redoes_nothing(backend, request, study, capsys):
    argv, store, configs = study
    assert main(sweep_on(backend, request, study)) == 0
    assert set(states(study).values()) == {"complete"}
    for config in configs:  # each run written as itself, whichever order the results came in
        metadata = json.loads(store.json_path(config.run_id).read_text())
        assert (metadata["config"], metadata["device"]) == (config.identity(), "cpu")
    written = {path: file_identity(path) for path in store.runs_dir.iterdir()}
    capsys.readouterr()
    assert main(sweep_on(backend, request, study)) == 0
    assert "nothing to run, all 4 runs are done" in capsys.readouterr().out
    assert {path: file_identity(path) for path in store.runs_dir.iterdir()} == written


def test_a_study_of_one_run_is_done(backend, request, study):
    """One task: joblib runs a lone task in the driver's own process, which claims no worker
    slot (a 1-run sweep on 2 local slots crashed with a traceback)."""
    argv, store, configs = study
    assert main([*sweep_on(backend, request, study), "--set", "grid.variant=['none']", "--set", "grid.seed=[0]"]) == 0
    (config,) = [c for c in configs if (c.variant, c.seed) == ("none", 0)]
    assert store.state(config) == "complete"


def test_a_task_that_raises_fails_its_runs_and_the_others_are_done(backend, request, study, monkeypatch, capsys):
    _, store, _ = study
    monkeypatch.setattr(runner, "worker_task", raising_task)
    assert main(sweep_on(backend, request, study)) == 1
    failed = failing_run(study)
    assert states(study) == {run_id: "failed" if run_id == failed.run_id else "complete" for run_id in states(study)}
    error = json.loads(store.json_path(failed.run_id).read_text())["error"].splitlines()[0]
    assert error.startswith("RuntimeError ") and error.endswith(": injected failure"), error
    assert "3 complete, 0 diverged, 1 failed" in capsys.readouterr().out


def test_ctrl_c_stops_the_sweep_with_one_line_and_keeps_the_finished_runs(backend, request, study, monkeypatch,
                                                                          capsys):  # fmt: skip
    # The KeyboardInterrupt a Ctrl-C raises where the driver waits for the backend, once one
    # task has been answered (a backend's run(tasks) is a generator: thrown in, as a signal lands).
    real_open = BACKENDS[backend].open

    @contextlib.contextmanager
    def open_then_interrupt(self, task_fn):
        with real_open(self, task_fn) as (run, workers):
            def run_until_interrupted(tasks):
                outcomes = run(tasks)
                yield next(outcomes)
                outcomes.throw(KeyboardInterrupt)

            yield run_until_interrupted, workers

    monkeypatch.setattr(BACKENDS[backend], "open", open_then_interrupt)
    assert main(sweep_on(backend, request, study)) == 130
    assert capsys.readouterr().err.splitlines()[-1] == INTERRUPTED
    assert sorted(states(study).values()) == ["complete", "pending", "pending", "pending"]


def test_a_dead_worker_neither_hangs_the_sweep_nor_costs_a_finished_run(backend, request, study, monkeypatch, capsys,
                                                                        tmp_path):  # fmt: skip
    _, store, _ = study
    mortal = SETUPS[backend].mortal
    if isinstance(mortal, str):
        pytest.skip(f"no worker of --backend {backend} can die alone: {mortal}")
    monkeypatch.setenv("BNSTUDY_TEST_DIED", str(tmp_path / "died"))  # before any worker process starts
    monkeypatch.setenv("GIT_OPTIONAL_LOCKS", "0")  # a worker killed mid-`git status` leaves no index.lock
    monkeypatch.setattr(runner, "worker_task", dying_task)
    with mortal() as flags:
        status = main(sweep_on(backend, request, study, flags))
        err = capsys.readouterr().err
        assert (tmp_path / "died").exists()
        # finished (the dead worker's task retried elsewhere, or failed), or stopped with one line
        assert status in (0, 1) or err.splitlines()[-1].startswith("bnstudy: error: "), err
        done = {run_id: file_identity(store.json_path(run_id)) for run_id, state in states(study).items()
                if state == "complete"}  # fmt: skip
        monkeypatch.setattr(runner, "worker_task", worker_task)
        assert main(sweep_on(backend, request, study, flags)) == 0
    assert set(states(study).values()) == {"complete"}
    assert {run_id: file_identity(store.json_path(run_id)) for run_id in done} == done
