"""The sweep (`bnstudy sweep`): plan a study's runs, skip the done ones, run the rest on a
backend, write each run as its result arrives, show progress, and end with a summary.

A sweep: skip the done runs; cut the rest into tasks (one run each on the CPU; on a GPU the
runs of one shape, for the fused engine), costliest first; run the tasks on the backend
(bnstudy.backends) with bnstudy.runner.worker_task as the task function; and, in the driver
alone, write each run to the store as its result arrives, so that a killed sweep keeps
every finished run.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

from tqdm import tqdm

from bnstudy.backends import Execution, TaskFailure, open_backend, plan_execution
from bnstudy.costs import Eta, estimate_seconds, format_duration, own_seconds
from bnstudy.settings import RunConfig
from bnstudy.spec import Study
from bnstudy.store import DONE_STATUSES, RunStore, check_writable, format_set_aside, writing


def make_tasks(configs: list[RunConfig], grouped: bool) -> list[list[RunConfig]]:
    """Cut runs into worker tasks, costliest first, so that the workers finish together on
    short tasks. Grouped: one task per fusion key (RunConfig.fusion_key), which
    runner.run_group trains as fused networks; otherwise one run per task."""
    if grouped:
        groups: dict[tuple, list[RunConfig]] = {}
        for config in configs:
            groups.setdefault(config.fusion_key(), []).append(config)
        tasks = list(groups.values())
    else:
        tasks = [[config] for config in configs]
    return sorted(tasks, key=lambda task: -sum(map(estimate_seconds, task)))


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
    from bnstudy.data import find_data_dir
    from bnstudy.runner import worker_task  # torch: loaded only by the commands that train

    configs = study.runs()
    store = RunStore(options.out)
    execution = plan_execution(options.backend, options.scheduler, options.device, options.jobs, options.fuse)
    if options.dry_run:
        print(format_dry_run(study, configs, store, execution))
        return 0
    check_writable(store.root, store.runs_dir)
    if execution.backend == "local":
        find_data_dir(options.data_dir)  # a missing dataset is one error now, not one per run
    task_fn = functools.partial(worker_task, data_dir=options.data_dir)
    with open_backend(execution, task_fn) as (run_tasks, workers), store.lock():
        with writing(store.root):
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
        for outcome in run_tasks(tasks):
            results = failed_results(outcome, execution.device) if isinstance(outcome, TaskFailure) else outcome
            for rows, metadata in results:
                record(store, rows, metadata, tally)
                if metadata["status"] == "failed":
                    bar.write(f"failed: {metadata['run_id']}: {metadata['error'].splitlines()[0]}", file=sys.stderr)
                eta.finished(configs[metadata["run_id"]], rows, metadata["group_size"])
                bar.update(1)
            bar.set_postfix_str(f"failed {tally.ran['failed']}, eta ~{format_duration(eta.seconds())}")
    tally.wall_seconds = time.perf_counter() - start
    return tally


def failed_results(failure: TaskFailure, device: str) -> list[tuple[list[dict], dict]]:
    """The runs of a task the backend gave no result for, each "failed" with its error, as
    worker_task reports a run that failed on its worker."""
    from bnstudy.runner import now, run_metadata

    ended = now()  # when it started is the worker's business, and the worker is gone
    return [([], run_metadata(config, "failed", device, ended, ended, failure.error)) for config in failure.task]


def record(store: RunStore, rows: list[dict], metadata: dict, tally: Tally) -> None:
    """Write one run's files and count it. UserError when the store cannot be written."""
    with writing(store.root):
        _, json_path = store.write_run(rows, metadata)
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
