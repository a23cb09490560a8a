"""Where runs execute. First the contract every backend keeps, one test body set run on
every backend of the registry (bnstudy.sweep.backends.BACKENDS) and on a toy backend this file
defines and registers in one line: every task's result arrives and is written; a task whose
function raises fails its runs alone; Ctrl-C stops the sweep with its one line, keeping the
finished runs; a dead worker (where a backend has workers of its own) neither hangs the
sweep nor loses a finished run; a second sweep redoes nothing. Then what only some
backends do: local workers' slots and signals, an address where no dask scheduler answers.

The contract's sweeps train tiny real runs (studies.TINY_SETTINGS, one epoch); the task
function is the sweep's own (runner.worker_task), swapped for one that raises or dies on one
run where a test says so.
"""

import contextlib
import dataclasses
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from studies import tiny_spec

from bnstudy.sweep import backends
from bnstudy.engine import runner
from bnstudy.sweep.backends import BACKENDS, InProcess, LocalProcesses, plan_backend
from bnstudy.sweep.backends.local import LocalOptions
from bnstudy.cli import main
from bnstudy.engine.runner import worker_task
from bnstudy.config.settings import CSV_COLUMNS
from bnstudy.config.spec import load_study
from bnstudy.results.store import RunStore

INTERRUPTED = "bnstudy: interrupted; finished runs are kept, the rest will be redone"
TERMINATED = "bnstudy: terminated (SIGTERM); finished runs are kept, the rest will be redone"
SPEC = tiny_spec("tiny", 'variant = ["none", "bn_before", "bn_after"]\nseed = [0, 1, 2]\n', limit_train=512,
                 batch_size=32)


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
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
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


# ---------------------------------------------------------------- planning
@pytest.mark.parametrize("gpus, jobs, slots", [(4, None, ("cuda:0", "cuda:1", "cuda:2", "cuda:3")),
                                               (4, 2, ("cuda:0", "cuda:1"))])  # fmt: skip
def test_one_gpu_runs_in_process_and_several_get_one_worker_each(monkeypatch, gpus, jobs, slots):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert plan_backend("local", LocalOptions(jobs), "auto") == LocalProcesses("cuda", slots)
    assert plan_backend("local", LocalOptions(jobs), "auto").grouped
    assert not plan_backend("local", LocalOptions(jobs), "auto", fuse=False).grouped  # --no-fuse
    assert plan_backend("local", LocalOptions(1), "auto") == InProcess("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert plan_backend("local", None, "auto") == InProcess("cuda")
    assert plan_backend("local", LocalOptions(3), "cpu") == LocalProcesses("cpu", ("cpu",) * 3)
    assert plan_backend("local", LocalOptions(1), "cpu") == InProcess("cpu")


# ---------------------------------------------------------------- local workers: slots and signals
def slot_and_sigint(task, device):
    """A task function, its task [a folder]: once the folder shows two workers in their
    tasks, this worker's pid, the device it was handed, how its worker process treats SIGINT
    (handler, blocked?), and whether a program it runs gets SIGINT blocked or ignored."""
    (Path(task[0]) / str(os.getpid())).touch()
    wait_for(lambda: len(list(Path(task[0]).iterdir())) == 2, "the other worker")  # so each takes one task
    child = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True, check=True).stdout
    masks = dict(line.split(":", 1) for line in child.splitlines())
    deaf = any(int(masks[key], 16) >> (signal.SIGINT - 1) & 1 for key in ("SigBlk", "SigIgn"))
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return [(os.getpid(), device, signal.getsignal(signal.SIGINT), blocked, deaf)]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads a process's signal masks in /proc")
def test_local_workers_are_handed_the_slot_they_claimed_drop_sigint_and_the_programs_they_run_get_it(tmp_path):
    with LocalProcesses("cpu", ("slot a", "slot b")).open(slot_and_sigint) as (run, workers):
        outcomes = list(run([[str(tmp_path)], [str(tmp_path)]]))
    assert workers == 2 and sorted(index for index, _ in outcomes) == [0, 1]
    results = [result for _, results in outcomes for result in results]
    assert len({pid for pid, *_ in results}) == 2
    assert sorted(device for _, device, *_ in results) == ["slot a", "slot b"]  # each worker its own slot's
    for _, _, handler, blocked, program_deaf in results:
        assert callable(handler) and handler is not signal.default_int_handler  # no KeyboardInterrupt in a worker
        assert not blocked and not program_deaf


def wait_for(condition, what: str, timeout: float = 120) -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.005)


def loky_workers(driver: int) -> list[int]:
    """The pids of the loky worker processes the driver process has started."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == driver and b"popen_loky_posix" in (stat.parent / "cmdline").read_bytes():
                pids.append(int(stat.parent.name))
    return pids


def sigint_set_up(pid: int) -> bool:
    """Whether the process has set up SIGINT (caught, as Python's KeyboardInterrupt handler
    does, blocked or ignored); a SIGINT before that ends it without a word."""
    with contextlib.suppress(OSError):
        masks = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return any(int(masks[key], 16) >> (signal.SIGINT - 1) & 1 for key in ("SigCgt", "SigBlk", "SigIgn"))
    return False


def sigint_as_in_a_terminal() -> None:
    """In a child before exec: SIGINT at its default action and unblocked."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def signal_when(sweep: subprocess.Popen, ready, send, moment: str) -> str:
    """Wait until `ready()` (the sweep still running), then `send()` it a signal and wait for
    it to end; its stderr. Its process group is killed on the way out, whatever happened."""
    try:
        wait_for(lambda: ready() or sweep.poll() is not None, moment)
        assert sweep.poll() is None, f"the sweep ended before {moment}"
        send()
        _, err = sweep.communicate(timeout=120)  # EOF on stderr: the workers, which hold it too, are gone
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
    return err


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="watches the worker processes in /proc")
@pytest.mark.parametrize("moment", ["workers starting", "training"])
def test_ctrl_c_in_a_two_job_sweep_is_one_line_and_leaves_no_half_written_run(tmp_path, moment):
    """SIGINT to the sweep's process group, as a terminal's Ctrl-C sends it: while a worker
    is still starting (importing; one interrupted then printed a traceback), and once runs
    are being written."""
    spec, out = tmp_path / "tiny.toml", tmp_path / "out"
    spec.write_text(SPEC)
    store = RunStore(out)
    command = [sys.executable, "-m", "bnstudy", "sweep", str(spec), "--out", str(out), "--jobs", "2"]
    # GIT_OPTIONAL_LOCKS=0: a worker's `git status` (a run's git_commit) takes no .git/index.lock,
    # which the SIGKILL below, or joblib's of its workers, could leave behind in this checkout.
    # preexec_fn: the sweep starts as a terminal's foreground command does, SIGINT neither
    # blocked nor ignored, whatever this test process inherited or an earlier test left.
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
                             preexec_fn=sigint_as_in_a_terminal)  # fmt: skip
    reached = {"workers starting": lambda: any(map(sigint_set_up, loky_workers(sweep.pid))),
               "training": lambda: list(store.runs_dir.glob("*.json"))}[moment]  # fmt: skip
    err = signal_when(sweep, reached, lambda: os.killpg(sweep.pid, signal.SIGINT), moment)
    assert sweep.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.splitlines()[-1] == INTERRUPTED
    # Whole files or none under a run's names (a `.tmp` may stay, for the next sweep to remove).
    for json_path in store.runs_dir.glob("*.json"):
        assert json.loads(json_path.read_text())["status"] == "complete"
        assert store.state(json_path.stem) == "complete"
    for csv_path in store.runs_dir.glob("*.csv"):
        assert csv_path.read_text().startswith(",".join(CSV_COLUMNS) + "\n")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="watches the worker processes in /proc")
def test_sigterm_to_a_two_job_sweep_is_one_line_stops_its_workers_and_the_sweep_resumes(tmp_path):
    """`kill PID` (SIGTERM, to the driver alone, as a service manager or a batch system's
    time limit sends it) is handled as a Ctrl-C is: one line, exit status 143."""
    spec, out = tmp_path / "tiny.toml", tmp_path / "out"
    spec.write_text(SPEC)
    store = RunStore(out)
    command = [sys.executable, "-m", "bnstudy", "sweep", str(spec), "--out", str(out), "--jobs", "2"]
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})  # fmt: skip
    workers = []

    def terminate():
        workers.extend(loky_workers(sweep.pid))
        os.kill(sweep.pid, signal.SIGTERM)

    err = signal_when(sweep, lambda: list(store.runs_dir.glob("*.json")), terminate, "a finished run")
    assert sweep.returncode == 143, err
    assert "Traceback" not in err and err.splitlines()[-1] == TERMINATED, err
    assert workers and not [pid for pid in workers if alive(pid)]
    for json_path in store.runs_dir.glob("*.json"):
        assert store.state(json_path.stem) == "complete"
    resumed = subprocess.run([*command[:-2], "--jobs", "1"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len(list(store.runs_dir.glob("*.json"))) == 9


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, whose parent has not reaped it, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# A driver that hands two workers a task each that sleeps for two minutes, once each worker
# has said (a file named after its pid in the folder argv[1]) that it is in its task.
SLEEPY_DRIVER = """
import os, sys, time
from pathlib import Path
from bnstudy.sweep.backends import LocalProcesses

def sleepy(task, device):
    (Path(sys.argv[1]) / str(os.getpid())).touch()
    time.sleep(120)
    return []

with LocalProcesses("cpu", ("cpu", "cpu")).open(sleepy) as (run, _):
    for _ in run([[1], [2]]):
        pass
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="watches the worker processes in /proc")
def test_local_workers_exit_soon_after_their_driver_dies_mid_task(tmp_path):
    driver = subprocess.Popen([sys.executable, "-c", SLEEPY_DRIVER, str(tmp_path)], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: len(list(tmp_path.iterdir())) == 2 or driver.poll() is not None, "two workers in their tasks")
        workers = [int(path.name) for path in tmp_path.iterdir()]
        assert driver.poll() is None and all(map(alive, workers))
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone, as the OOM killer would
        wait_for(lambda: not any(map(alive, workers)), "the workers to exit", timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


# ---------------------------------------------------------------- an address that is no scheduler
@contextlib.contextmanager
def silent_server():
    """A TCP server on localhost that accepts connections and never says a word; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        with contextlib.suppress(OSError):  # the server closed
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for connection in accepted:
            connection.close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass  # its log goes to stderr, which the test reads


@contextlib.contextmanager
def http_server():
    """An HTTP server on localhost (what `python3 -m http.server` runs); yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("server", [silent_server, http_server])
def test_an_address_where_no_scheduler_answers_is_one_error_within_the_deadline(tmp_path, capsys, server):
    pytest.importorskip("distributed")
    import dask
    spec, out = tmp_path / "tiny.toml", tmp_path / "out"
    spec.write_text(SPEC)
    status = []
    with server() as port, dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        argv = ["sweep", str(spec), "--out", str(out), "--backend", "dask", "--scheduler", f"tcp://127.0.0.1:{port}"]
        sweep = threading.Thread(target=lambda: status.append(main(argv)), daemon=True)
        sweep.start()
        sweep.join(timeout=60)  # far beyond the 1 s deadline; without one it waits forever
    assert status == [2], "the sweep is still waiting for an answer"
    err = capsys.readouterr().err
    assert err == (f"bnstudy: error: --scheduler tcp://127.0.0.1:{port}: cannot connect: no dask scheduler answered "
                   "within 1 s (is one running there? `dask scheduler` prints its address)\n")  # fmt: skip
    assert not out.exists()
