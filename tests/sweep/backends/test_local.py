"""What only the local backend does, beyond the contract every backend keeps
(tests/sweep/test_backends.py): its plan (one worker per job on the CPU or per GPU, a single
slot in this process), and its workers' slots and signals: each worker is handed the slot it
claimed and leaves SIGINT to the driver (the programs it runs still get it); Ctrl-C and
SIGTERM to a two-job sweep are one line; the workers exit soon after their driver dies."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from studies import tiny_spec

from bnstudy.sweep.backends import InProcess, plan_backend
from bnstudy.sweep.backends.local import LocalOptions, LocalProcesses
from bnstudy.config.settings import CSV_COLUMNS
from bnstudy.results.store import RunStore

INTERRUPTED = "bnstudy: interrupted; finished runs are kept, the rest will be redone"
TERMINATED = "bnstudy: terminated (SIGTERM); finished runs are kept, the rest will be redone"
SPEC = tiny_spec("tiny", 'variant = ["none", "bn_before", "bn_after"]\nseed = [0, 1, 2]\n', limit_train=512,
                 batch_size=32)


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
    assert err.splitlines()[-1] == INTERRUPTED, err
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
from bnstudy.sweep.backends.local import LocalProcesses

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
