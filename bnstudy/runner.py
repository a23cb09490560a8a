"""Scheduling runs: execute one run, and sweep a study's grid over worker processes, GPUs or
a dask cluster.

`execute` is the unit every front end shares: `bnstudy run` calls it directly; the sweep
calls it in worker processes, on a GPU, or on dask workers, and writes what it returns.

A sweep: skip the done runs; cut the rest into tasks (one run each on the CPU; on a GPU the
runs of one shape, for the fused engine), costliest first; run the tasks where the
Execution says, each worker loading the dataset once; and, in the driver alone, write each
run to the store as its result arrives, so that a killed sweep keeps every finished run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import math
import os
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from joblib import Parallel, delayed, parallel_config
from tqdm import tqdm

from bnstudy.data import TEST_SIZE, FashionMNIST, find_data_dir, load_fashion_mnist
from bnstudy.errors import UserError
from bnstudy.fused import fit_group, max_group_size, shape_key
from bnstudy.spec import RunConfig, Study
from bnstudy.store import RunStore, check_writable, device_name, now, run_metadata
from bnstudy.store import DONE_STATUSES, format_set_aside
from bnstudy.train import fit

Result = tuple[list[dict], dict]  # (per-epoch rows, the run's JSON metadata), what execute returns


def execute(config: RunConfig, data: FashionMNIST, on_epoch: Callable[[dict], None] | None = None,
            catch: bool = True) -> tuple[list[dict], dict]:  # fmt: skip
    """Fit `config` on `data` and return (rows, metadata for the run's JSON).

    With `catch`, an exception inside training is recorded as status "failed" (its error
    and traceback in the metadata, the rows finished so far kept) instead of propagating.
    """
    device = data.train_x.device
    started = now()
    rows: list[dict] = []

    def keep(row: dict) -> None:
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)

    try:
        status = fit(config, data, on_epoch=keep).status
        error = None
    except Exception as exc:  # noqa: BLE001  (recorded, the sweep goes on)
        if not catch:
            raise
        status, error = "failed", describe_error(exc)
    return rows, run_metadata(config, status, device_name(device), started, now(), error, len(rows))


def describe_error(exc: BaseException) -> str:
    """A failed run's `error` field: the exception's one-line summary, then its traceback."""
    return f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}"


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when available, else the CPU; "cuda" without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device: unknown device {name!r}; expected auto, cpu or cuda")
    return torch.device(name)


# ---------------------------------------------------------------- cost model
# Single-thread CPU microseconds per image on this project's 2-core machine (torch 2.14.1,
# two one-thread worker processes side by side, as `--jobs 2` runs them), measured on
# 2026-11-26 by `python bench/cost_table.py results/default results/quick` after `make
# sweep` and `make sweep EXP=experiments/quick.toml`: the lower quartile of each variant's
# and batch size's per-epoch costs (all epochs but the first; the shared machine slows
# some), rounded up. TRAIN_US per training image (forward, backward, optimizer step);
# FORWARD_US per image of an evaluation pass. Only the first estimate rests on them: the
# progress bar's ETA rescales them by how long the finished runs actually took.
TRAIN_US = {
    "none": {32: 121, 64: 79, 256: 67, 1024: 86},
    "bn_before": {32: 145, 64: 111, 256: 91, 1024: 123},
    "bn_after": {32: 141, 64: 107, 256: 96, 1024: 110},
}
FORWARD_US = {"none": 19, "bn_before": 31, "bn_after": 32}
SCRATCH_SLOWDOWN = 1.0  # bn_impl = "scratch" against nn.BatchNorm


def _per_image_us(table: dict[int, float], batch_size: int) -> float:
    """Linear interpolation in log2(batch size) between measured points, flat outside them."""
    sizes = sorted(table)
    if batch_size <= sizes[0] or batch_size >= sizes[-1]:
        return table[min(max(batch_size, sizes[0]), sizes[-1])]
    high = next(size for size in sizes if size >= batch_size)
    low = sizes[sizes.index(high) - 1]
    weight = (math.log2(batch_size) - math.log2(low)) / (math.log2(high) - math.log2(low))
    return table[low] + weight * (table[high] - table[low])


def estimate_seconds(config: RunConfig) -> float:
    """Predicted single-thread CPU seconds of a run's training and evaluation, all epochs.

    An epoch trains on train_size images and evaluates the test set; a BN variant adds a
    batch-statistics test pass and PreciseBN (its sample, then one more test pass).
    """
    n_test = config.limit_test or TEST_SIZE
    forwards = n_test
    if config.variant != "none":
        forwards += 2 * n_test + min(config.precise_bn_samples, config.train_size)
    micros = config.train_size * _per_image_us(TRAIN_US[config.variant], config.batch_size)
    micros += forwards * FORWARD_US[config.variant]
    slowdown = SCRATCH_SLOWDOWN if config.bn_impl == "scratch" and config.variant != "none" else 1.0
    return config.epochs * micros * slowdown * 1e-6


def own_seconds(rows: list[dict], group_size: int = 1) -> float:
    """A run's share of the train+eval time of its rows: a fused group's rows carry the
    whole group's time, split evenly among its `group_size` members."""
    return sum(row["train_seconds"] + row["eval_seconds"] for row in rows) / group_size


class Eta:
    """The remaining wall time of a sweep: the cost model's seconds for the unfinished runs,
    scaled by actual/predicted over the finished epochs, shared among the busy workers."""

    def __init__(self, configs: list[RunConfig], workers: int):
        self.workers = workers
        self.runs_left = len(configs)
        self.predicted_left = sum(map(estimate_seconds, configs))
        self.predicted_done = self.actual_done = 0.0

    def finished(self, config: RunConfig, rows: list[dict], group_size: int = 1) -> None:
        predicted = estimate_seconds(config)
        self.runs_left -= 1
        self.predicted_left -= predicted
        self.predicted_done += predicted * len(rows) / config.epochs
        self.actual_done += own_seconds(rows, group_size)

    def seconds(self) -> float:
        scale = self.actual_done / self.predicted_done if self.predicted_done else 1.0
        return max(self.predicted_left, 0.0) * scale / max(1, min(self.workers, self.runs_left))


def format_duration(seconds: float) -> str:
    """3h05m, 12m40s or 7s."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ---------------------------------------------------------------- where runs execute
@dataclass(frozen=True)
class Execution:
    """Where a sweep's runs execute.

    backend "local": one worker per entry of `slots` ("cpu" once per job, or "cuda:<i>" per
    GPU); a single slot runs in the driver's own process. backend "dask": the cluster at
    `scheduler`, each worker resolving `device` itself. `grouped`: tasks hold the runs of one
    shape, trained as fused groups, on CUDA (for dask: --device cuda) unless `fuse` is off
    (--no-fuse); else one run each (on the CPU a fused group is slower than solo runs).
    """

    backend: str
    device: str
    slots: tuple[str, ...] = ()
    scheduler: str | None = None
    fuse: bool = True

    @property
    def grouped(self) -> bool:
        return self.device == "cuda" and self.fuse

    def describe(self) -> str:
        if self.backend == "dask":
            return (f"the dask cluster at {self.scheduler} (device {self.device}; one run at a time per worker "
                    f"process, so start workers with --nthreads 1)")  # fmt: skip
        if len(self.slots) == 1:
            where = f"{self.device} in this process" + (", one torch thread" if self.device == "cpu" else "")
        else:
            kind = "processes, one torch thread each" if self.device == "cpu" else "processes, one per GPU"
            where = f"{self.device} with {len(self.slots)} worker {kind}"
        return where + (", runs of one shape fused into one network" if self.grouped else "")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plan_execution(backend: str, scheduler: str | None, device: str, jobs: int | None, fuse: bool = True) -> Execution:
    """Check the execution flags and pick the workers. Connects to nothing; UserError for a bad
    combination or a device that is not here."""
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs: must be >= 1 (got {jobs})")
    if backend == "dask":
        if not scheduler:
            raise UserError("--backend dask needs --scheduler tcp://HOST:PORT (a running dask scheduler)")
        return Execution("dask", device, scheduler=scheduler, fuse=fuse)
    if scheduler:
        raise UserError("--scheduler is for --backend dask")
    resolved = resolve_device(device)
    if resolved.type == "cpu":
        return Execution("local", "cpu", ("cpu",) * (jobs or available_cores()), fuse=fuse)
    gpus = min(jobs or torch.cuda.device_count(), torch.cuda.device_count())
    return Execution("local", "cuda", ("cuda",) if gpus == 1 else tuple(f"cuda:{i}" for i in range(gpus)), fuse=fuse)


def make_tasks(configs: list[RunConfig], grouped: bool) -> list[list[RunConfig]]:
    """Cut runs into worker tasks, costliest first, so that the workers finish together on
    short tasks. Grouped: one task per shape (fused.shape_key), which run_group trains as
    fused networks; otherwise one run per task."""
    if grouped:
        groups: dict[tuple, list[RunConfig]] = {}
        for config in configs:
            groups.setdefault(shape_key(config), []).append(config)
        tasks = list(groups.values())
    else:
        tasks = [[config] for config in configs]
    return sorted(tasks, key=lambda task: -sum(map(estimate_seconds, task)))


def run_group(configs: list[RunConfig], data: FashionMNIST) -> list[Result]:
    """Train runs of one shape on `data`; one (rows, metadata) per config, in order.

    Chunks of up to fused.max_group_size (what fits the device's free memory; 1 on the CPU,
    where fusion does not pay) train as one fused network each; a chunk of one trains solo.
    """
    size = max_group_size(data.train_x.device, configs[0].batch_size)
    results: list[Result] = []
    for start in range(0, len(configs), size):
        chunk = configs[start : start + size]
        results += execute_group(chunk, data) if len(chunk) > 1 else [execute(chunk[0], data)]
    return results


def execute_group(configs: list[RunConfig], data: FashionMNIST) -> list[Result]:
    """fused.fit_group on `configs` (one shape); one (rows, metadata) per config, in order.
    An exception inside the group marks every member "failed" (the sweep goes on)."""
    where, started = device_name(data.train_x.device), now()
    try:
        results = fit_group(configs, data)
    except Exception as exc:  # noqa: BLE001  (recorded, the sweep goes on)
        error = describe_error(exc)
        return [([], run_metadata(c, "failed", where, started, now(), error, 0, len(configs))) for c in configs]
    ended = now()
    return [(r.rows, run_metadata(c, r.status, where, started, ended, None, len(r.rows), len(configs)))
            for c, r in zip(configs, results)]  # fmt: skip


@functools.cache
def worker_dataset(data_dir: str | None, device: str, limit_train: int | None, limit_test: int | None) -> FashionMNIST:
    """The dataset on `device`, loaded once per process for all its runs with these limits
    (a study rarely varies them; each distinct pair is one more copy in memory)."""
    return load_fashion_mnist(data_dir, device, limit_train, limit_test)


_slot: tuple | None = None  # (the open lock file, the device) of this worker process, set by claim_slot


def claim_slot(lock_dir: str, slots: tuple[str, ...]) -> None:
    """Worker-process initializer: take the first slot whose lock file no live worker holds,
    for the rest of this process's life. The kernel drops a dead worker's lock, so a
    replacement worker takes over its slot (its GPU)."""
    global _slot
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


# A run's initialisation is drawn from torch's global RNG, which train.build_model seeds:
# runs in two threads of one process (a dask worker with several threads) would interleave
# their draws. So a process trains one task at a time.
_one_task_at_a_time = threading.Lock()


def worker_task(configs: list[RunConfig], data_dir: str | None, device: str | None) -> list[Result]:
    """Run one task wherever it lands (the driver, a worker process, a dask worker): on
    `device`, or on this worker's claimed slot when None. Never raises: when the worker
    cannot set up (no dataset, no such device) the task's runs come back "failed"."""
    with _one_task_at_a_time:
        return _run_task(configs, data_dir, device)


def _run_task(configs: list[RunConfig], data_dir: str | None, device: str | None) -> list[Result]:
    started = now()
    try:
        where = torch.device(_slot[1]) if device is None else resolve_device(device)
        if where.type == "cpu":
            torch.set_num_threads(1)  # the cores run parallel runs, not parallel kernels
        data = worker_dataset(data_dir, str(where), configs[0].limit_train, configs[0].limit_test)
    except Exception as exc:  # noqa: BLE001  (reported per run; the sweep goes on)
        error = describe_error(exc)
        return [([], run_metadata(config, "failed", str(device), started, now(), error)) for config in configs]
    return run_group(configs, data)


@contextlib.contextmanager
def open_backend(execution: Execution, data_dir: str | None) -> Iterator[tuple[Callable, int]]:
    """Set up the execution for the sweep's duration. Yields (run, workers): run(tasks)
    yields each task's list of results as soon as it finishes, in any order. UserError
    when the dask scheduler cannot be reached."""
    if execution.backend == "dask":
        with _dask_client(execution.scheduler) as client, parallel_config(backend="dask"):
            yield _joblib_runner(-1, data_dir, execution.device), len(client.nthreads())  # worker processes
    elif len(execution.slots) > 1:
        with tempfile.TemporaryDirectory(prefix="bnstudy-slots-") as lock_dir, parallel_config(
            backend="loky", initializer=claim_slot, initargs=(lock_dir, execution.slots)
        ):
            yield _joblib_runner(len(execution.slots), data_dir, None), len(execution.slots)
    else:
        yield (lambda tasks: (worker_task(task, data_dir, execution.slots[0]) for task in tasks)), 1


def _joblib_runner(n_jobs: int, data_dir: str | None, device: str | None) -> Callable:
    def run(tasks):
        # No more workers than tasks: each one costs a torch import and a dataset load.
        jobs = min(n_jobs, len(tasks)) if n_jobs > 0 else n_jobs
        parallel = Parallel(n_jobs=jobs, return_as="generator_unordered", batch_size=1)
        return parallel(delayed(worker_task)(task, data_dir, device) for task in tasks)

    return run


@contextlib.contextmanager
def _dask_client(scheduler: str):
    try:
        from distributed import Client
    except ImportError:
        raise UserError("--backend dask needs dask.distributed: pip install 'bnstudy[dask]'") from None
    try:
        client = Client(scheduler)  # waits up to dask's distributed.comm.timeouts.connect (30 s)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
    with client:
        yield client


# ---------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class SweepOptions:
    """The sweep command's execution flags (spec settings live in the Study)."""

    out: str | os.PathLike
    jobs: int | None = None
    backend: str = "local"
    scheduler: str | None = None
    device: str = "auto"
    data_dir: str | None = None
    dry_run: bool = False
    fuse: bool = True


@dataclass
class Tally:
    """What a sweep did: runs written per status, failures (run_id, json path, error line),
    sum of the runs' own train+eval seconds, wall seconds, workers busy."""

    workers: int = 1
    ran: dict = dataclasses.field(default_factory=lambda: {"complete": 0, "diverged": 0, "failed": 0})
    failures: list = dataclasses.field(default_factory=list)
    run_seconds: float = 0.0
    wall_seconds: float = 0.0


def sweep(study: Study, options: SweepOptions) -> int:
    """Run the study's pending runs (`bnstudy sweep`); returns the exit status: 1 when a run
    failed, else 0. With dry_run, lists the runs and their state, and writes nothing."""
    configs = study.runs()
    store = RunStore(options.out)
    execution = plan_execution(options.backend, options.scheduler, options.device, options.jobs, options.fuse)
    if options.dry_run:
        print(format_dry_run(study, configs, store, execution))
        return 0
    check_writable(store.root)
    if execution.backend == "local":
        find_data_dir(options.data_dir)  # a missing dataset is one error now, not one per run
    with open_backend(execution, options.data_dir) as (run_tasks, workers), store.lock():
        store.write_spec(study.to_toml())
        store.remove_stale_temps()
        if moved := store.set_aside_damaged(config.run_id for config in configs):  # redone as pending runs
            print(format_set_aside(moved, store), flush=True)
        pending = [config for config in configs if not store.is_done(config.run_id)]
        print(format_header(study, len(configs), pending, store, execution, workers), flush=True)
        tally = run_pending(pending, execution, run_tasks, workers, store, study.name) if pending else Tally()
    print(format_summary(study, len(configs) - len(pending), tally, store))
    return 1 if tally.ran["failed"] else 0


def run_pending(pending: list[RunConfig], execution: Execution, run_tasks: Callable, workers: int,
                store: RunStore, name: str) -> Tally:  # fmt: skip
    """Run `pending` and write each run to `store` as it arrives, with a progress bar on
    stderr (runs done/total, failures, ETA)."""
    tasks = make_tasks(pending, execution.grouped)
    busy = min(workers, len(tasks))
    tally, eta = Tally(workers=busy), Eta(pending, busy)
    configs = {config.run_id: config for config in pending}
    start = time.perf_counter()
    bar = tqdm(total=len(pending), desc=name, unit="run", file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar}| {elapsed}{postfix}")  # fmt: skip
    with bar:
        bar.set_postfix_str(f"failed 0, eta ~{format_duration(eta.seconds())}")
        for results in run_tasks(tasks):
            for rows, metadata in results:
                record(store, rows, metadata, tally)
                if metadata["status"] == "failed":
                    bar.write(f"failed: {metadata['run_id']}: {metadata['error'].splitlines()[0]}", file=sys.stderr)
                eta.finished(configs[metadata["run_id"]], rows, metadata["group_size"])
                bar.update(1)
            bar.set_postfix_str(f"failed {tally.ran['failed']}, eta ~{format_duration(eta.seconds())}")
    tally.wall_seconds = time.perf_counter() - start
    return tally


def record(store: RunStore, rows: list[dict], metadata: dict, tally: Tally) -> None:
    """Write one run's files and count it. UserError when the store cannot be written."""
    try:
        _, json_path = store.write_run(rows, metadata)
    except OSError as exc:
        raise UserError(f"{store.root}: cannot write results ({exc.strerror})") from None
    tally.ran[metadata["status"]] += 1
    tally.run_seconds += own_seconds(rows, metadata["group_size"])
    if metadata["status"] == "failed":
        tally.failures.append((metadata["run_id"], json_path, metadata["error"].splitlines()[0]))


# ---------------------------------------------------------------- what the sweep prints
QUICK_SPEC = "experiments/quick.toml"
QUICK_HINT_SECONDS = 600  # suggest the quick study when a CPU sweep would take longer


def format_header(study: Study, total: int, pending: list[RunConfig], store: RunStore, execution: Execution,
                  workers: int) -> str:  # fmt: skip
    lines = [f"study {study.name}: {total} runs from {study.source}, {total - len(pending)} already done, "
             f"{len(pending)} to run -> {store.root}",
             f"running on {execution.describe()}",
             format_cpu_estimate(pending, execution, workers)]  # fmt: skip
    return "\n".join(line for line in lines if line)


def format_cpu_estimate(pending: list[RunConfig], execution: Execution, workers: int) -> str:
    """On the CPU, how long the pending runs should take (the cost model over the workers),
    with a pointer to the quick study when that is long; "" elsewhere."""
    if execution.device != "cpu" or not pending or not workers:
        return ""
    estimate = sum(map(estimate_seconds, pending)) / min(workers, len(pending))
    line = (f"on this CPU: about {format_duration(estimate)} with {workers} worker(s) (measured per-image costs; "
            f"the progress bar's ETA follows the actual runs)")  # fmt: skip
    if estimate > QUICK_HINT_SECONDS:
        line += f"; for a first look in a few minutes: bnstudy sweep {QUICK_SPEC}"
    return line


def format_summary(study: Study, skipped: int, tally: Tally, store: RunStore) -> str:
    """The closing screen: what ran, how long, where the files are, what failed."""
    ran = sum(tally.ran.values())
    if not ran:
        lines = [f"{study.name}: nothing to run, all {skipped} runs are done"]
    else:
        counts = ", ".join(f"{n} {status}" for status, n in tally.ran.items())
        already = f"; {skipped} were already done" if skipped else ""
        lines = [f"{study.name}: {ran} runs in {format_duration(tally.wall_seconds)}: {counts}{already}"]
        share = tally.run_seconds / tally.workers / tally.wall_seconds
        lines.append(f"  runs' own train+eval time {format_duration(tally.run_seconds)} over {tally.workers} "
                     f"worker(s): {share:.1%} of the wall time, {1 - share:.1%} sweep overhead")  # fmt: skip
    lines.append(f"  results: {store.runs_dir}/<run_id>.csv and .json; the spec as run: {store.spec_path}")
    if tally.failures:
        lines.append("  failed (the same command reruns them):")
        lines += [f"    {run_id}: {error}  [{path}]" for run_id, path, error in tally.failures[:5]]
        if len(tally.failures) > 5:
            lines.append(f"    ... and {len(tally.failures) - 5} more")
    lines.append(f"  next: bnstudy status {store.root}; bnstudy report {store.root}")
    return "\n".join(lines)


def format_dry_run(study: Study, configs: list[RunConfig], store: RunStore, execution: Execution) -> str:
    """Every run with its state in the store, then what a sweep would run and how."""
    states = {config.run_id: store.state(config.run_id) for config in configs}
    pending = [config for config in configs if states[config.run_id] not in DONE_STATUSES]
    lines = [f"{states[config.run_id]:9} {config.run_id}" for config in configs]
    lines.append(f"dry run of {study.name} ({study.source} -> {store.root}): {len(configs)} runs, "
                 f"{len(pending)} to run on {execution.describe()}; nothing trained or written")  # fmt: skip
    lines.append(format_cpu_estimate(pending, execution, len(execution.slots)))
    return "\n".join(line for line in lines if line)
