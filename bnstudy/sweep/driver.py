"""The sweep (`bnstudy sweep`): plan a study's runs, skip the done ones, run the rest on a
backend, write each run as its result arrives, show progress, and end with a summary.

A sweep: skip the done runs; cut the rest into tasks (one run each on the CPU; on a GPU the
runs of one shape, for the fused engine), costliest first; run the tasks on the backend
(bnstudy.sweep.backends) with bnstudy.engine.runner.worker_task as the task function; and, in the driver
alone, write each run to the store as its result arrives, so that a killed sweep keeps
every finished run.

A worker's result (a runfiles.RunOutcome per run) is data, never a say in where it goes:
the driver writes it as one of its own runs (the backend tells which task it answers), only
when it names that run, with that run's config, from a worker on the driver's bnstudy
version and commit, and only as a run whose files then check out; anything else is that run
failed with the reason (`vet`).

At its start, under the study's lock, a sweep checks each run's files once
(`check_runs`): that one check sets the damaged runs aside and tells the done runs from the
pending ones.
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

from bnstudy.sweep.backends import DEFAULT_BACKEND, Backend, TaskFailure, plan_backend
from bnstudy.sweep.costs import REFERENCE, Eta, Speed, estimate_seconds, format_duration, measured_speed, own_seconds
from bnstudy.results.runfiles import RunCheck, RunOutcome, RunState, RunStatus
from bnstudy.config.settings import CSV_COLUMNS, EVALS_COLUMNS, RunConfig
from bnstudy.config.spec import Study
from bnstudy.results.store import RunStore, check_no_links, check_writable, format_set_aside, writing


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
    backend: str = DEFAULT_BACKEND  # a name in backends.BACKENDS
    backend_options: object = None  # that backend's Options (backends.chosen_options; None: its defaults)
    device: str = "auto"
    data_dir: str | None = None
    dry_run: bool = False
    fuse: bool = True
    allow_mixed_workers: bool = False  # accept results from workers on another bnstudy version or commit


@dataclass
class Tally:
    """What a sweep did: runs written per RunStatus, failures (run_id, json path, error line),
    sum of the runs' own train+eval seconds, wall seconds, workers busy."""

    workers: int = 1
    ran: dict[RunStatus, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(RunStatus, 0))
    failures: list = dataclasses.field(default_factory=list)
    run_seconds: float = 0.0
    wall_seconds: float = 0.0


def sweep(study: Study, options: SweepOptions) -> int:
    """Run the study's pending runs (`bnstudy sweep`); returns the exit status: 1 when a run
    failed, else 0. With dry_run, lists the runs and their state, and writes nothing."""
    from bnstudy.engine.data import check_dataset
    from bnstudy.engine.runner import worker_task  # torch: loaded only by the commands that train

    configs = study.runs()
    store = RunStore(options.out)
    check_no_links(store.root)
    execution = plan_backend(options.backend, options.backend_options, options.device, options.fuse)  # a Backend
    if options.dry_run:
        print(format_dry_run(study, configs, store, execution))
        return 0
    check_writable(store.root, store.runs_dir)
    if execution.local_workers:  # a missing or corrupt dataset is one error now, not one per run
        check_dataset(options.data_dir)  # (a cluster's workers find theirs on their own machines)
    task_fn = functools.partial(worker_task, data_dir=options.data_dir)
    with execution.open(task_fn) as (run_tasks, workers), store.lock():
        with writing(store.root):
            store.write_spec(study.to_toml())
            store.remove_stale_temps()
        pending = check_runs(configs, store)
        speed = machine_speed(pending, execution, workers, options.data_dir)
        print(format_header(study, len(configs), pending, store, execution, workers, speed), flush=True)
        tally = (run_pending(pending, execution, run_tasks, workers, store, study.name, options.allow_mixed_workers,
                             speed) if pending else Tally())  # fmt: skip
    print(format_summary(study, len(configs) - len(pending), tally, store))
    return 1 if tally.ran[RunStatus.FAILED] else 0


def check_runs(configs: list[RunConfig], store: RunStore) -> list[RunConfig]:
    """The runs of `configs` that are not done, from one check of each run's files; those
    whose files must go first (store.unusable: damaged, or left by an older bnstudy) have
    them set aside (and it says so), to be redone as pending runs. Call it holding the
    store's lock, so that the check stays true."""
    located = [store.locate(config) for config in configs]  # (the id its files are under, their check)
    if moved := store.set_aside_unusable(dict(zip(configs, located))):
        print(format_set_aside(moved, store), flush=True)
    return [config for config, (_, check) in zip(configs, located) if not check.state.is_done()]


CALIBRATE_ABOVE = 60.0  # s: a sweep predicted shorter is not worth a second of measurement


def machine_speed(pending: list[RunConfig], execution: Backend, workers: int, data_dir=None) -> Speed:
    """This machine's Speed for the first estimate: measured (runner.time_model, about a
    second, on the costliest pending run's model at the pending runs' batch sizes, at most
    MAX_CALIBRATED_SIZES of them) for a local CPU sweep predicted to take over
    CALIBRATE_ABOVE; else the cost model's own (a short sweep, GPUs, a dask cluster,
    whose machines are elsewhere)."""
    if not execution.local_workers or execution.device != "cpu" or not pending:
        return REFERENCE
    if sum(map(estimate_seconds, pending)) / min(workers, len(pending)) <= CALIBRATE_ABOVE:
        return REFERENCE
    batch_sizes = sorted({config.batch_size for config in pending})
    if len(batch_sizes) > MAX_CALIBRATED_SIZES:  # the smallest, the largest and some between
        step = (len(batch_sizes) - 1) / (MAX_CALIBRATED_SIZES - 1)
        batch_sizes = [batch_sizes[round(i * step)] for i in range(MAX_CALIBRATED_SIZES)]
    from bnstudy.engine.runner import time_model  # the engine times the model: torch, loaded only here

    costliest = max(pending, key=estimate_seconds)
    return measured_speed(costliest, *time_model(costliest, data_dir, tuple(batch_sizes)))


MAX_CALIBRATED_SIZES = 4  # batch sizes time_model times; a run of another takes the nearest one's factor


def run_pending(pending: list[RunConfig], execution: Backend, run_tasks: Callable, workers: int,
                store: RunStore, name: str, mixed_ok: bool = False, speed: Speed = REFERENCE) -> Tally:  # fmt: skip
    """Run `pending` and write each run to `store` as it arrives, with a progress bar on
    stderr (runs done/total, failures, ETA). Each result is vetted against the driver's own
    run (`vet`); a task the backend never answered fails its runs."""
    driver_versions.cache_clear()  # this sweep's code, read as it starts
    tasks = make_tasks(pending, execution.grouped)
    busy = max(1, min(workers, len(tasks)))  # a dask cluster may have none yet: the estimates need one
    tally, eta = Tally(workers=busy), Eta(pending, busy, speed)
    unanswered = dict(enumerate(tasks))
    start = time.perf_counter()
    bar = tqdm(total=len(pending), desc=name, unit="run", file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar}| {elapsed}{postfix}")  # fmt: skip

    def write(task: list[RunConfig], outcomes: list[RunOutcome]) -> None:
        for config, outcome in zip(task, outcomes):
            check = record(store, config, outcome, tally, execution.device)
            if check.state is RunState.FAILED:
                bar.write(f"failed: {config.run_id}: {check.metadata['error'].splitlines()[0]}", file=sys.stderr)
            eta.finished(config, check.rows or [], check.metadata["group_size"])
            bar.update(1)
        bar.set_postfix_str(f"failed {tally.ran[RunStatus.FAILED]}, eta ~{format_duration(eta.seconds())}")

    with bar:
        waiting = "eta: waiting for a worker" if not workers else f"eta ~{format_duration(eta.seconds())}"
        bar.set_postfix_str(f"failed 0, {waiting}")
        for index, answer in run_tasks(tasks):
            task = unanswered.pop(index, None) if type(index) is int else None
            if task is not None:  # else no task of this sweep's, or one answered already
                write(task, vet(task, answer, execution.device, mixed_ok))
        for task in unanswered.values():
            write(task, failed_results(task, execution.device, "the backend returned no result for this run"))
    tally.wall_seconds = time.perf_counter() - start
    return tally


def vet(task: list[RunConfig], answer, device: str, mixed_ok: bool = False) -> list[RunOutcome]:
    """One RunOutcome per run of `task`, the driver's own runs, from what the backend gave
    for it (`answer`: the task function's list, or a TaskFailure): the worker's outcome
    where it is that run's (`result_problem`), else the run failed with the reason. So no
    worker decides which run a result is written as."""
    if isinstance(answer, TaskFailure):
        return failed_results(task, device, answer.error)
    if not isinstance(answer, (list, tuple)) or len(answer) != len(task):
        count = len(answer) if isinstance(answer, (list, tuple)) else "no list of"
        runs = "run" if len(task) == 1 else "runs"
        return failed_results(task, device, f"the worker returned {count} results for a task of {len(task)} {runs}")
    vetted = []
    for config, result in zip(task, answer):
        problem = result_problem(config, result, mixed_ok)
        refused = f"the worker's result was refused: {problem}"
        vetted += failed_results([config], device, refused) if problem else [result]
    return vetted


@functools.lru_cache(maxsize=1)
def driver_versions() -> tuple[str, str | None]:
    """(bnstudy version, git commit) of this process as it started, which its workers must
    share. Read once: a commit made while the sweep runs does not change the driver's code."""
    import bnstudy
    from bnstudy.engine.runner import git_commit

    return bnstudy.__version__, git_commit()


def same_code(worker: tuple, driver: tuple) -> bool:
    """Whether a worker's (version, commit) is the driver's. A "-dirty" mark is left out: it
    says the checkout has edits, not which, and editing a file while a sweep runs (in the
    driver's checkout, which local workers share) must not fail every later run."""
    def base(versions: tuple) -> tuple:
        version, commit = versions
        return version, commit.removesuffix("-dirty") if isinstance(commit, str) else commit

    return base(worker) == base(driver)


def result_problem(config: RunConfig, result, mixed_ok: bool = False) -> str | None:
    """What makes a worker's `result` unfit to be written as run `config`, in words, or None:
    anything but a RunOutcome whose metadata names this run (run_id, study, config), a run
    status, the driver's bnstudy version and commit (unless `mixed_ok`), and rows and points
    with their columns. The numbers are checked once written (`record`)."""
    if not (isinstance(result, RunOutcome) and isinstance(result.rows, list) and isinstance(result.metadata, dict)):
        return "not a run's outcome (rows, metadata, points)"
    rows, metadata, points = result.rows, result.metadata, result.points
    if metadata.get("run_id") != config.run_id:
        return f"it is for run {ascii(metadata.get('run_id'))}"
    theirs, ours = metadata.get("config"), config.identity()
    if metadata.get("study") != config.study or not isinstance(theirs, dict) or theirs != ours:
        if not isinstance(theirs, dict):
            return "it has no config"
        changed = [f"{k} {ascii(theirs.get(k))}, not {ascii(ours.get(k))}" for k in {**ours, **theirs}
                   if theirs.get(k) != ours.get(k)] or [f"study {ascii(metadata.get('study'))}"]  # fmt: skip
        return f"its config has {'; '.join(changed)}"
    worker = (metadata.get("bnstudy_version"), metadata.get("git_commit"))
    if not mixed_ok and not same_code(worker, driver_versions()):
        (their_version, their_commit), (version, commit) = worker, driver_versions()
        return (f"worker runs bnstudy {their_version} ({their_commit or 'no git commit'}), driver {version} "
                f"({commit or 'no git commit'}); --allow-mixed-workers accepts such results")  # fmt: skip
    if RunStatus.of(metadata.get("status")) is None:
        return f"its status is {ascii(metadata.get('status'))}"
    if not all(isinstance(row, dict) and set(CSV_COLUMNS) <= row.keys() for row in rows) or not (
            isinstance(points, list) and all(isinstance(p, dict) and set(EVALS_COLUMNS) <= p.keys() for p in points)):
        return "its rows or points lack a run's columns"  # fmt: skip
    return None


def failed_results(task: list[RunConfig], device: str, error: str) -> list[RunOutcome]:
    """Each run of `task` failed with `error` (a one-line reason, then any details), made as
    worker_task makes a run that failed on its worker (runner.run_outcome): for the runs the
    driver has no usable result for."""
    from bnstudy.engine.runner import now, run_outcome

    ended = now()  # when it started is the worker's business, and the worker is gone
    return [run_outcome(config, device, ended, error=error) for config in task]


def record(store: RunStore, config: RunConfig, outcome: RunOutcome, tally: Tally, device: str) -> RunCheck:
    """Write run `config` from a vetted `outcome` and count it; returns the check of what was
    written (its rows read back as numbers for a done run). An outcome whose files do not
    check out (RunStore.check) is replaced by the run failed with the reason. UserError when
    the store cannot be written."""
    with writing(store.root):
        store.write_run(outcome)  # vetted: its run_id is config.run_id
        check = store.check(config)
        if check.state is not outcome.status.state:
            (outcome,) = failed_results([config], device, f"the worker's result does not check out: {check.reason}")
            store.write_run(outcome)
            check = store.check(config)
    status, metadata = RunStatus(check.metadata["status"]), check.metadata
    tally.ran[status] += 1
    tally.run_seconds += own_seconds(check.rows or [], metadata["group_size"])
    if status is RunStatus.FAILED:
        tally.failures.append((config.run_id, store.json_path(config.run_id), metadata["error"].splitlines()[0]))
    return check


# ---------------------------------------------------------------- what the sweep prints
QUICK_SPEC = "experiments/quick.toml"
QUICK_HINT_SECONDS = 600  # suggest the quick study when a CPU sweep would take longer


def format_header(study: Study, total: int, pending: list[RunConfig], store: RunStore, execution: Backend,
                  workers: int, speed: Speed = REFERENCE) -> str:  # fmt: skip
    lines = [f"study {study.name}: {total} runs from {study.source}, {total - len(pending)} already done, "
             f"{len(pending)} to run -> {store.root}",
             f"running on {execution.describe()}",
             "no dask worker has joined yet: the runs wait for one" if not workers else "",
             format_cpu_estimate(pending, execution, workers, speed)]  # fmt: skip
    return "\n".join(line for line in lines if line)


def runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def format_cpu_estimate(pending: list[RunConfig], execution: Backend, workers: int, speed: Speed = REFERENCE) -> str:
    """On the CPU, how long the pending runs should take (the cost model at `speed` over the
    workers), with a pointer to the quick study when that is long; "" elsewhere."""
    if execution.device != "cpu" or not pending or not workers:
        return ""
    estimate = sum(estimate_seconds(config, speed) for config in pending) / min(workers, len(pending))
    where = "timed on this machine just now" if speed.measured else "measured on the project's 2-core machine"
    line = (f"on this CPU: about {format_duration(estimate)} with {workers} worker(s) (per-image costs {where}; "
            f"the progress bar's ETA follows the actual runs)")  # fmt: skip
    if estimate > QUICK_HINT_SECONDS:
        line += f"; for a first look in a few minutes: bnstudy sweep {QUICK_SPEC}"
    return line


def format_summary(study: Study, skipped: int, tally: Tally, store: RunStore) -> str:
    """The closing screen: what ran, how long, where the files are, what failed."""
    ran = sum(tally.ran.values())
    if not ran:
        done = "the 1 run is done" if skipped == 1 else f"all {skipped} runs are done"
        lines = [f"{study.name}: nothing to run, {done}"]
    else:
        counts = ", ".join(f"{n} {status}" for status, n in tally.ran.items())
        already = f"; {skipped} {'was' if skipped == 1 else 'were'} already done" if skipped else ""
        lines = [f"{study.name}: {runs(ran)} in {format_duration(tally.wall_seconds)}: {counts}{already}"]
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


def format_dry_run(study: Study, configs: list[RunConfig], store: RunStore, execution: Backend) -> str:
    """Every run with its state in the store, then what a sweep would run and how."""
    located = [store.locate(config) for config in configs]  # (the id its files are under, their check)
    pending = [config for config, (_, check) in zip(configs, located) if not check.state.is_done()]
    lines = [f"{check.state:9} {run_id}" for run_id, check in located]
    lines.append(f"dry run of {study.name} ({study.source} -> {store.root}): {len(configs)} runs, "
                 f"{len(pending)} to run on {execution.describe()}; nothing trained or written")  # fmt: skip
    lines.append(format_cpu_estimate(pending, execution, execution.local_workers))
    return "\n".join(line for line in lines if line)
