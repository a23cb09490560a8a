"""Executing runs: one run (`execute`), a group of runs of one shape (fused on a GPU), and
a sweep's task on whatever worker it lands.

`execute` is the unit every front end shares: `bnstudy run` calls it directly; the sweep
(bnstudy.sweep.driver) hands `worker_task` to its backend (bnstudy.sweep.backends), which calls it in
this process, in worker processes, on a GPU or on dask workers; the driver writes the
RunOutcome each run comes back as (`run_outcome` makes them all). Each worker process loads
the dataset once.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import subprocess
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

import bnstudy
from bnstudy.engine.data import FashionMNIST, load_fashion_mnist
from bnstudy.engine.fused import fit_group, max_group_size
from bnstudy.results.runfiles import RunOutcome, RunStatus
from bnstudy.config.settings import RunConfig
from bnstudy.engine.train import RunResult, build_model, evaluate, fit, make_optimizer, train_epoch


def execute(config: RunConfig, data: FashionMNIST, on_epoch: Callable[[dict], None] | None = None,
            catch: bool = True) -> RunOutcome:  # fmt: skip
    """Fit `config` on `data` and return its RunOutcome.

    With `catch`, an exception inside training is recorded as the run failed (its error
    and traceback in the metadata, the rows and points finished so far kept) instead of
    propagating.
    """
    where, started = device_name(data.train_x.device), now()
    result = RunResult()  # filled as fit goes, so that a failure keeps the finished epochs
    try:
        fit(config, data, on_epoch=on_epoch, result=result)
    except Exception as exc:  # noqa: BLE001  (recorded, the sweep goes on)
        if not catch:
            raise
        return run_outcome(config, where, started, result, describe_error(exc))
    return run_outcome(config, where, started, result)


def run_outcome(config: RunConfig, device: str, started: str, result: RunResult | None = None,
                error: str | None = None, group_size: int = 1) -> RunOutcome:  # fmt: skip
    """The RunOutcome of run `config` on `device` (its name), started at `started` and
    ending now: the rows and points `result` holds (none when None) and its JSON's metadata.
    Its status is `result`'s, or failed when `error` (a one-line summary, then any details)
    is given: the one place a failed run is made, for a run that raised (execute), a fused
    group that raised (execute_group), a worker that could not set up (worker_task) and a
    result the driver refuses or never got (driver.failed_results)."""
    result = RunResult() if result is None else result
    status = RunStatus.FAILED if error is not None else result.status
    metadata = run_metadata(config, status, device, started, now(), error, len(result.rows), group_size)
    return RunOutcome(rows=result.rows, metadata=metadata, points=result.points)


def describe_error(exc: BaseException) -> str:
    """A failed run's `error` field: the exception's one-line summary, then its traceback."""
    return f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}"


# ---------------------------------------------------------------- the run's JSON
@functools.cache
def git_commit() -> str | None:
    """The checkout's commit (with "-dirty" when it has changes), or None outside git. `git status`
    takes no index lock (--no-optional-locks): a worker killed mid-call must not leave one."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_name(device: torch.device) -> str:
    """A readable name of the device, e.g. "NVIDIA H100 80GB HBM3" or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_metadata(config: RunConfig, status: RunStatus | str, device: str, started: str, ended: str,
                 error: str | None = None, epochs_done: int = 0, group_size: int = 1) -> dict:  # fmt: skip
    """The content of a run's JSON file, JSON values only (the status as its text).
    `group_size`: how many runs trained together as one fused network (1: solo); the rows'
    timing columns are that whole group's."""
    return {
        "run_id": config.run_id,
        "study": config.study,
        "status": RunStatus(status).value,
        "config": config.identity(),
        "epochs_done": epochs_done,
        "error": error,
        "started": started,
        "ended": ended,
        "device": device,
        "group_size": group_size,
        "torch_version": torch.__version__,
        "bnstudy_version": bnstudy.__version__,
        "git_commit": git_commit(),
    }


# ---------------------------------------------------------------- groups and worker tasks
def run_group(configs: list[RunConfig], data: FashionMNIST) -> list[RunOutcome]:
    """Train runs of one shape on `data`; one RunOutcome per config, in order.

    Chunks of up to fused.max_group_size (what fits the device's free memory; 1 on the CPU,
    where fusion does not pay) train as one fused network each; a chunk of one trains solo.
    """
    size = max_group_size(data.train_x.device, configs[0].batch_size)
    results: list[RunOutcome] = []
    for start in range(0, len(configs), size):
        chunk = configs[start : start + size]
        results += execute_group(chunk, data) if len(chunk) > 1 else [execute(chunk[0], data)]
    return results


def execute_group(configs: list[RunConfig], data: FashionMNIST) -> list[RunOutcome]:
    """fused.fit_group on `configs` (one shape); one RunOutcome per config, in order.
    An exception inside the group fails every member (the sweep goes on)."""
    where, started, size = device_name(data.train_x.device), now(), len(configs)
    try:
        results = fit_group(configs, data)
    except Exception as exc:  # noqa: BLE001  (recorded, the sweep goes on)
        error = describe_error(exc)
        return [run_outcome(c, where, started, error=error, group_size=size) for c in configs]
    return [run_outcome(c, where, started, r, group_size=size) for c, r in zip(configs, results)]


@functools.cache
def worker_dataset(data_dir: str | None, device: str, limit_train: int | None, limit_test: int | None) -> FashionMNIST:
    """The dataset on `device`, loaded once per process for all its runs with these limits
    (a study rarely varies them; each distinct pair is one more copy in memory)."""
    return load_fashion_mnist(data_dir, device, limit_train, limit_test)


# A run's initialisation is drawn from torch's global RNG, which train.build_model seeds:
# runs in two threads of one process (a dask worker with several threads) would interleave
# their draws. So a process trains one task at a time.
_one_task_at_a_time = threading.Lock()


def worker_task(configs: list[RunConfig], device: str, data_dir: str | None = None) -> list[RunOutcome]:
    """Run one task wherever it lands (the driver, a worker process, a dask worker) on
    `device`, the torch device name its backend picked for this worker ("cpu", "cuda",
    "cuda:1"): bnstudy.sweep.backends' task function. Never raises: when the worker cannot set up
    (no dataset, no such device) the task's runs come back "failed"."""
    with _one_task_at_a_time:
        return _run_task(configs, data_dir, device)


def _run_task(configs: list[RunConfig], data_dir: str | None, device: str) -> list[RunOutcome]:
    started = now()
    try:
        where = torch.device(device)
        if where.type == "cpu":
            torch.set_num_threads(1)  # the cores run parallel runs, not parallel kernels
        data = worker_dataset(data_dir, str(where), configs[0].limit_train, configs[0].limit_test)
    except Exception as exc:  # noqa: BLE001  (reported per run; the sweep goes on)
        error = describe_error(exc)
        return [run_outcome(config, str(device), started, error=error) for config in configs]
    return run_group(configs, data)


# ---------------------------------------------------------------- timing this machine (the sweep's first estimate)
CALIBRATION_SECONDS = (0.8, 0.3)  # the time `time_model` spends training (all batch sizes), then evaluating


def time_model(config: RunConfig, data_dir=None, batch_sizes: tuple[int, ...] = ()) -> tuple[dict[int, float], float]:
    """This machine's microseconds per image for `config`'s model (variant, activation, BN,
    optimizer), timed here on one torch thread as a CPU worker runs: ({batch size: training
    us per image} for each of `batch_sizes` (default: the run's), evaluation us per image).
    Training steps on the real training images for CALIBRATION_SECONDS[0] in all, then
    evaluation batches for [1], each after one untimed step; about a second. The run's own
    training and results are untouched (a model of its own; torch's global RNG restored).
    What the times mean against the cost model is costs.measured_speed's business."""
    sizes = sorted(set(batch_sizes or (config.batch_size,)))
    data = load_fashion_mnist(data_dir, "cpu", limit_train=max(4096, *sizes), limit_test=2000)
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    torch.set_num_threads(1)
    try:
        model = build_model(config, torch.device("cpu"))
        optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)
        train_us = {}
        for size in sizes:
            batch = max(2, min(size, len(data.train_x)))
            batches = torch.randperm(len(data.train_x))[: len(data.train_x) // batch * batch].view(-1, batch)
            train_us[size] = _timed(lambda i: train_epoch(model, optimizer, data, [batches[i % len(batches)]]), batch,
                                    CALIBRATION_SECONDS[0] / len(sizes))  # fmt: skip
        model.eval()
        forward_us = _timed(lambda i: evaluate(model, data.test_x, data.test_y, 500), len(data.test_x),
                            CALIBRATION_SECONDS[1])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)
    return train_us, forward_us


def _timed(step, images: int, seconds: float) -> float:
    """Microseconds per image of `step(i)` (i = 0, 1, ...; each over `images` images), timed
    over as many steps as fit in `seconds` (at least 3) after one untimed warm-up step."""
    step(0)
    done, start = 0, time.perf_counter()
    while done < 3 or time.perf_counter() - start < seconds:
        done += 1
        step(done)
    return (time.perf_counter() - start) / (done * images) * 1e6
