"""The local backend, LocalProcesses: worker processes on this machine (joblib's loky), one
per CPU core or one per GPU, each claiming a slot as it starts (claim_slot), leaving SIGINT
to the driver and exiting with it (exit_with_parent); a single slot (one job, one GPU) is
InProcess. Its Options: LocalOptions (--jobs)."""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing.resource_tracker
import os
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from bnstudy.errors import UserError
from bnstudy.sweep.backends.base import Backend, RunTasks, TaskFailure, TaskFn, call_task, resolve_device
from bnstudy.sweep.backends.inprocess import InProcess

MAX_JOBS = 1024  # worker processes or GPUs on one machine; more is a typo


@dataclass(frozen=True)
class LocalOptions:
    """--jobs: CPU worker processes, or GPUs to use (None: every core, every GPU)."""

    jobs: int | None = None

    def __post_init__(self) -> None:
        if self.jobs is not None and not 1 <= self.jobs <= MAX_JOBS:
            raise UserError(f"--jobs: must be between 1 and {MAX_JOBS} (got {self.jobs})")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class LocalProcesses(Backend):
    """Worker processes on this machine (joblib's loky), one per CPU core or one per GPU: each
    claims a slot of `slots` ("cpu" once per job, or "cuda:<i>" per GPU) as it starts
    (`claim_slot`), trains on that slot's device, and exits with the driver."""

    summary = "worker processes on this machine, one per CPU core or one per GPU (a single one: this process)"
    Options = LocalOptions
    device: str  # "cpu" or "cuda"
    slots: tuple[str, ...]
    fuse: bool = True

    @classmethod
    def add_flags(cls, group) -> None:
        group.add_argument("--jobs", type=int, default=None, metavar="N",
                           help="CPU worker processes (default: the cores) or GPUs to use (default: all); "
                                "a dask cluster uses all its workers")  # fmt: skip

    @classmethod
    def plan(cls, options: LocalOptions, device: str, fuse: bool) -> Backend:
        """One slot per job on the CPU, one per GPU on CUDA; a single slot runs in this
        process (InProcess): a worker would only add its start-up."""
        resolved = resolve_device(device)
        if resolved.type == "cpu":
            slots = ("cpu",) * (options.jobs or available_cores())
        else:
            import torch

            gpus = torch.cuda.device_count()
            slots = tuple(f"cuda:{i}" for i in range(min(options.jobs or gpus, gpus)))
        return InProcess(resolved.type, fuse) if len(slots) == 1 else cls(resolved.type, slots, fuse)

    @property
    def local_workers(self) -> int:
        return len(self.slots)

    def describe(self) -> str:
        kind = "processes, one torch thread each" if self.device == "cpu" else "processes, one per GPU"
        return f"{self.device} with {len(self.slots)} worker {kind}" + self.fused()

    @contextlib.contextmanager
    def open(self, task_fn: TaskFn):
        from joblib import parallel_config  # here: every command builds the parser, which lists this class

        with tempfile.TemporaryDirectory(prefix="bnstudy-slots-") as lock_dir, parallel_config(
            backend="loky", initializer=claim_slot, initargs=(lock_dir, self.slots, os.getpid())
        ):
            yield _joblib_runner(self.slots, task_fn), len(self.slots)


def _joblib_runner(slots: tuple[str, ...], task_fn: TaskFn) -> RunTasks:
    from joblib import Parallel, delayed

    def run(tasks):
        """The outcomes as the workers finish; UserError when a worker process dies (loky
        then drops every task in flight and queued: the same command reruns them)."""
        from concurrent.futures.process import BrokenProcessPool  # loky's TerminatedWorkerError is one

        if len(tasks) == 1:  # joblib would run a lone task in this process, which claims no slot
            yield 0, call_task(task_fn, tasks[0], slots[0], "in this process")
            return
        # No more workers than tasks: each one costs a torch import and a dataset load.
        parallel = Parallel(n_jobs=min(len(slots), len(tasks)), return_as="generator_unordered", batch_size=1)
        outcomes = None
        try:
            with _workers_start_deaf_to_sigint():  # the workers start in this call
                outcomes = parallel(delayed(_in_worker)(task_fn, i, task) for i, task in enumerate(tasks))
            for outcome in outcomes:  # not `yield from`: closing `run` would close `outcomes` unquietly
                yield outcome
        except BrokenProcessPool:
            raise UserError("a local worker process died (killed, or out of memory?); finished runs are kept, "
                            "the same command reruns the rest") from None  # fmt: skip
        finally:
            if outcomes is not None:
                _abandon(outcomes)

    return run


def _abandon(outcomes) -> None:
    """Close joblib's generator of outcomes (a no-op once it is exhausted) without joblib's
    warning that the tasks not yet consumed are cancelled: the sweep is ending early (Ctrl-C,
    a dead worker, an error) and says itself what becomes of its runs. Left to the garbage
    collector, the warning came after the sweep's last line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"joblib\.parallel")
        outcomes.close()


def _in_worker(task_fn: TaskFn, index: int, task: list) -> tuple[int, list | TaskFailure]:
    """In a worker process: (index, the outcome on this worker's slot), so that the driver
    knows which of its tasks a result answers (joblib's unordered generator does not say)."""
    return index, call_task(task_fn, task, _claimed_device(), f"in worker process {os.getpid()}")


@contextlib.contextmanager
def _workers_start_deaf_to_sigint():
    """Block SIGINT in this thread for the block: processes started meanwhile start with it
    blocked (claim_slot then has them drop it), and this process gets a SIGINT that came
    meanwhile at the block's end.

    A terminal's Ctrl-C signals the whole process group. The driver alone should handle it
    (one line, then joblib stops the workers): a worker interrupted while still importing,
    before any initializer can act, printed a traceback."""
    # CPython's resource tracker unblocks SIGINT after starting itself (SIG_UNBLOCK, not a
    # restore); loky's executor starts it on first use, so start it before blocking.
    multiprocessing.resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_slot: tuple | None = None  # (the open lock file, the device) of this worker process, set by claim_slot


def claim_slot(lock_dir: str, slots: tuple[str, ...], driver: int | None = None) -> None:
    """Worker-process initializer: leave SIGINT to the driver for good (the process started
    with it blocked: _workers_start_deaf_to_sigint), exit when the `driver` process is gone
    (exit_with_parent), and take the first slot whose lock file no live worker holds, for
    the rest of this process's life. The kernel drops a dead worker's lock, so a
    replacement worker takes over its slot (its GPU)."""
    global _slot
    if driver is not None:
        exit_with_parent(driver)
    # Caught and dropped rather than blocked or ignored, which the programs this worker runs
    # would inherit: git (runner.git_commit) must still get a Ctrl-C and remove its lock file.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    for index, device in enumerate(slots):
        handle = open(Path(lock_dir) / f"slot{index}.lock", "w")  # noqa: SIM115  (held until exit)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _slot = (handle, device)
        return
    raise RuntimeError(f"all {len(slots)} worker slots are taken")


def _claimed_device() -> str:
    """The device of the slot this worker process claimed (RuntimeError outside a worker)."""
    if _slot is None:
        raise RuntimeError("this process claimed no worker slot")
    return _slot[1]


def exit_with_parent(parent: int, every: float = 0.5) -> None:
    """End this process within `every` seconds of its parent's end (its parent pid changes:
    it was adopted), even mid-run: a driver killed with SIGKILL (or by the OOM killer) can
    stop no worker, and nobody would take a result. A daemon thread; os._exit, so nothing
    of the run's is left to clean up in a process whose results only the driver writes."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="bnstudy-exit-with-parent", daemon=True).start()
