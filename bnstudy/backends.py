"""Where a sweep's tasks execute: this process, local worker processes (one per CPU core
or one per GPU), or a dask cluster.

One small interface for all three, as Hydra's launchers have it: `open_backend(execution,
task_fn)` is a context manager yielding (run, workers), where run(tasks) yields (index,
outcome) for each task as soon as it finishes, in any order: the task's position in
`tasks` and its result, or a TaskFailure for a task that gave none (on a dask cluster).
The index, not the result, says which task it was: the driver checks each result against
its own runs (bnstudy.sweep). The task function is handed in: task_fn(task, device)
with device None meaning "the slot this worker process claimed" (`claimed_device`). A
backend knows nothing of training, and training nothing of backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import multiprocessing.resource_tracker
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from joblib import Parallel, delayed, parallel_config

from bnstudy.errors import UserError

TaskFn = Callable[[list, "str | None"], list]  # (task, device or None) -> the task's results


@dataclass(frozen=True)
class TaskFailure:
    """A task that gave no result: its dask worker died running it more often than the
    scheduler allows (distributed.scheduler.allowed-failures), or the worker could not
    run it at all. `error`: a one-line reason, then details; the sweep records the task's
    runs as failed with it, so that the next sweep reruns them."""

    task: list
    error: str


# tasks -> (index in tasks, outcome) for each task as it finishes
RunTasks = Callable[[list[list]], Iterable["tuple[int, list | TaskFailure]"]]


@dataclass(frozen=True)
class TLS:
    """A tls:// scheduler's certificates from --tls-ca-file, --tls-cert and --tls-key (the key may be in the cert)."""

    ca_file: str
    cert: str
    key: str | None = None


@dataclass(frozen=True)
class Execution:
    """Where a sweep's runs execute.

    backend "local": one worker per entry of `slots` ("cpu" once per job, or "cuda:<i>" per
    GPU); a single slot runs in the driver's own process. backend "dask": the cluster at
    `scheduler`, each worker resolving `device` itself. `grouped`: tasks hold the runs of one
    shape, trained as fused groups, on CUDA (for dask: --device cuda) unless `fuse` is off
    (--no-fuse); else one run each (on the CPU a fused group is slower than solo runs).
    `tls`: a tls:// scheduler's certificates from the flags (None: dask's configuration's).
    """

    backend: str
    device: str
    slots: tuple[str, ...] = ()
    scheduler: str | None = None
    fuse: bool = True
    tls: TLS | None = None

    @property
    def grouped(self) -> bool:
        return self.device == "cuda" and self.fuse

    def describe(self) -> str:
        if self.backend == "dask":
            tls = "TLS" if _scheme(self.scheduler) == "tls" else "no TLS: any client that reaches it runs code there"
            return (f"the dask cluster at {self.scheduler} ({tls}; device {self.device}; one run at a time per worker "
                    f"process, so start workers with --nthreads 1)")  # fmt: skip
        if len(self.slots) == 1:
            where = f"{self.device} in this process" + (", one torch thread" if self.device == "cpu" else "")
        else:
            kind = "processes, one torch thread each" if self.device == "cpu" else "processes, one per GPU"
            where = f"{self.device} with {len(self.slots)} worker {kind}"
        return where + (", runs of one shape fused into one network" if self.grouped else "")


def resolve_device(name: str):
    """The torch.device for "auto" (CUDA when available, else the CPU), "cpu" or "cuda";
    UserError for "cuda" without a GPU or an unknown name."""
    import torch  # here, not at the top: `bnstudy --help` and `status` must not pay for torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device: unknown device {name!r}; expected auto, cpu or cuda")
    return torch.device(name)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


MAX_JOBS = 1024  # worker processes or GPUs on one machine; more is a typo


def plan_execution(backend: str, scheduler: str | None, device: str, jobs: int | None, fuse: bool = True,
                   tls: tuple = (None, None, None)) -> Execution:  # fmt: skip
    """Check the execution flags and pick the workers; `tls`: --tls-ca-file, --tls-cert,
    --tls-key (each None when not given). Connects to nothing; UserError for a bad
    combination, an unreadable certificate or a device that is not here."""
    if jobs is not None and not 1 <= jobs <= MAX_JOBS:
        raise UserError(f"--jobs: must be between 1 and {MAX_JOBS} (got {jobs})")
    if backend == "dask":
        if not scheduler:
            raise UserError("--backend dask needs --scheduler tcp://HOST:PORT (a running dask scheduler)")
        return Execution("dask", device, scheduler=scheduler, fuse=fuse, tls=check_tls(scheduler, *tls))
    if scheduler:
        raise UserError("--scheduler is for --backend dask")
    if any(tls):
        raise UserError("--tls-ca-file, --tls-cert and --tls-key are for --backend dask with a tls:// scheduler")
    resolved = resolve_device(device)
    if resolved.type == "cpu":
        return Execution("local", "cpu", ("cpu",) * (jobs or available_cores()), fuse=fuse)
    import torch

    gpus = min(jobs or torch.cuda.device_count(), torch.cuda.device_count())
    return Execution("local", "cuda", ("cuda",) if gpus == 1 else tuple(f"cuda:{i}" for i in range(gpus)), fuse=fuse)


def _scheme(address: str) -> str:
    """An address's protocol, as dask reads it: tcp unless it names one (tls://HOST:PORT)."""
    return address.split("://", 1)[0].lower() if "://" in address else "tcp"


def check_tls(scheduler: str, ca_file, cert, key) -> TLS | None:
    """The TLS of the flags (None when none is given); UserError for flags beside an address
    that is not tls://, a CA without a certificate or the reverse, or a file not readable."""
    if not any((ca_file, cert, key)):
        return None
    if _scheme(scheduler) != "tls":
        raise UserError(f"--tls-ca-file, --tls-cert and --tls-key are for a tls:// scheduler (got --scheduler "
                        f"{scheduler})")  # fmt: skip
    if not cert:
        raise UserError(f"--scheduler {scheduler}: {'--tls-ca-file' if ca_file else '--tls-key'} needs --tls-cert "
                        "(this client's certificate) beside it")  # fmt: skip
    if not ca_file:
        raise UserError(f"--scheduler {scheduler}: --tls-cert needs --tls-ca-file (the cluster's CA certificate) "
                        "beside it")  # fmt: skip
    for flag, path in (("--tls-ca-file", ca_file), ("--tls-cert", cert), ("--tls-key", key)):
        try:
            if path is not None:
                Path(path).read_bytes()  # readable? (a certificate is a few kB)
        except OSError as exc:
            raise UserError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
    return TLS(str(ca_file), str(cert), None if key is None else str(key))


# ---------------------------------------------------------------- worker slots
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


def claimed_device() -> str:
    """The device of the slot this worker process claimed (RuntimeError outside a worker)."""
    if _slot is None:
        raise RuntimeError("this process claimed no worker slot")
    return _slot[1]


# ---------------------------------------------------------------- the backends
@contextlib.contextmanager
def open_backend(execution: Execution, task_fn: TaskFn) -> Iterator[tuple[RunTasks, int]]:
    """Set up the execution for the sweep's duration. Yields (run, workers): run(tasks)
    yields (index, task_fn's result) for each task as soon as it finishes, in any order; a
    dask cluster yields a TaskFailure for a task it gave up on. UserError when no dask
    scheduler answers at the address."""
    if execution.backend == "dask":
        with _dask_client(execution.scheduler, execution.tls) as client:
            # Workers may join later (0 now: the sweep says it waits); the count sizes the estimates.
            yield _dask_runner(client, task_fn, execution.device), len(client.nthreads())
    elif len(execution.slots) > 1:
        with tempfile.TemporaryDirectory(prefix="bnstudy-slots-") as lock_dir, parallel_config(
            backend="loky", initializer=claim_slot, initargs=(lock_dir, execution.slots, os.getpid())
        ):
            yield _joblib_runner(len(execution.slots), task_fn), len(execution.slots)
    else:
        yield (lambda tasks: ((i, task_fn(task, execution.slots[0])) for i, task in enumerate(tasks))), 1


def _joblib_runner(n_jobs: int, task_fn: TaskFn) -> RunTasks:
    def run(tasks):
        # No more workers than tasks: each one costs a torch import and a dataset load.
        parallel = Parallel(n_jobs=min(n_jobs, len(tasks)), return_as="generator_unordered", batch_size=1)
        with _workers_start_deaf_to_sigint():  # the workers start in this call
            return parallel(delayed(_numbered)(task_fn, i, task) for i, task in enumerate(tasks))

    return run


def _numbered(task_fn: TaskFn, index: int, task: list) -> tuple[int, list]:
    """In a worker process: (index, task_fn's result), so that the driver knows which of its
    tasks a result answers (joblib's unordered generator does not say)."""
    return index, task_fn(task, None)


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


# ---------------------------------------------------------------- the dask cluster
def _dask_runner(client, task_fn: TaskFn, device: str) -> RunTasks:
    """Submit every task to the cluster, earliest first (costliest, as make_tasks orders
    them), and yield each outcome as it finishes. distributed reruns a task whose worker
    died on another worker (or the same one, restarted by its nanny); `_outcome` turns a
    task it gave up on into a TaskFailure."""
    from distributed import as_completed

    def run(tasks):
        futures = {client.submit(task_fn, task, device, pure=False): (i, task) for i, task in enumerate(tasks)}
        for future in as_completed(list(futures), loop=client.loop):
            # Popped, so that the cluster can drop a result once it is here.
            index, task = futures.pop(future)
            yield index, _outcome(future, task, client.scheduler.address)

    return run


def _outcome(future, task: list, scheduler: str) -> "list | TaskFailure":
    """A finished future's result; a TaskFailure when the task raised or its workers kept
    dying; UserError when the scheduler was lost (it cancels every future)."""
    from distributed.scheduler import KilledWorker

    if future.cancelled():
        raise UserError(f"lost the dask scheduler at {scheduler}; finished runs are kept, "
                        "the same command reruns the rest")  # fmt: skip
    exc = future.exception()
    if exc is None:
        return future.result()
    if isinstance(exc, KilledWorker):
        deaths = exc.allowed_failures + 1
        died = "died once" if deaths == 1 else f"died {deaths} times, the last"
        summary = f"KilledWorker: the dask worker running this task {died} on {exc.last_worker.address}; see its log"
    else:  # worker_task catches training errors, so this one is the worker's own (e.g. no bnstudy there)
        summary = f"{type(exc).__name__} on a dask worker: {exc}"
    return TaskFailure(task, f"{summary}\n{exc!r}")


def _connect_deadline() -> float:
    """Seconds allowed to reach a dask scheduler: dask's distributed.comm.timeouts.connect
    (30 s unless configured, e.g. DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=10s)."""
    import dask
    from dask.utils import parse_timedelta

    return parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds")


@contextlib.contextmanager
def _dask_client(scheduler: str, tls: TLS | None = None):
    """A distributed Client of the scheduler at `scheduler` (over TLS with `tls`'s
    certificates, or dask's configuration's), closed on exit (which cancels the tasks still
    on the cluster). UserError when none answers within _connect_deadline()."""
    try:
        from distributed import Client
    except ImportError:
        raise UserError("--backend dask needs dask.distributed: pip install 'bnstudy[dask]'") from None
    deadline, security = _connect_deadline(), _security(scheduler, tls)
    _check_scheduler(scheduler, deadline, security)
    try:
        client = Client(scheduler, timeout=deadline, set_as_default=False, security=security)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"--scheduler {scheduler}: cannot connect ({exc})") from None
    try:
        yield client
    finally:
        _close(client)


def _close(client) -> None:
    """Close the client, which cancels its tasks still on the cluster. A client that lost its
    scheduler is still trying to reconnect, and distributed logs the end of that as an
    error with a traceback; the sweep has said what happened in one line, so mute it."""
    logger = logging.getLogger("distributed.client")
    level = logger.level
    if client.status == "connecting":
        logger.setLevel(logging.CRITICAL)
    try:
        client.close()
    finally:
        logger.setLevel(level)


def _security(scheduler: str, tls: TLS | None):
    """The distributed Security of this client: `tls`'s certificates, or those of dask's
    configuration (distributed.comm.tls.*, e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE in the
    environment); UserError for a tls:// scheduler without a CA and a certificate."""
    from distributed.security import Security

    if tls is not None:
        return Security(tls_ca_file=tls.ca_file, tls_client_cert=tls.cert, tls_client_key=tls.key,
                        require_encryption=True)  # fmt: skip
    security = Security()
    if _scheme(scheduler) == "tls" and not (security.tls_ca_file and security.tls_client_cert):
        names = ("CA_FILE", "CLIENT__CERT", "CLIENT__KEY")
        variables = ", ".join(f"DASK_DISTRIBUTED__COMM__TLS__{name}" for name in names)
        raise UserError(f"--scheduler {scheduler}: a tls:// scheduler needs the cluster's CA certificate and this "
                        f"client's certificate and key: --tls-ca-file, --tls-cert and --tls-key, or dask's "
                        f"configuration ({variables})")  # fmt: skip
    return security


def _check_scheduler(address: str, deadline: float, security=None) -> None:
    """Ask the server at `address` who it is, within `deadline` seconds in all, as a client
    of `security` (None: dask's configuration); UserError unless a dask scheduler answers.
    Client alone would hang on an address that accepts and stays silent: distributed waits
    for the handshake's reply without a limit."""
    from distributed.core import rpc
    from distributed.security import Security

    async def identity() -> dict:
        connection_args = (security or Security()).get_connection_args("client")  # a bad certificate: one line below
        async with rpc(address, timeout=deadline, connection_args=connection_args) as remote:
            return await remote.identity()

    try:
        answer = asyncio.run(asyncio.wait_for(identity(), deadline))
    except TimeoutError:
        raise UserError(f"--scheduler {address}: cannot connect: no dask scheduler answered within {deadline:g} s "
                        "(is one running there? `dask scheduler` prints its address)") from None  # fmt: skip
    except Exception as exc:  # noqa: BLE001  (refused, a bad address or scheme, TLS settings, another protocol)
        raise UserError(f"--scheduler {address}: cannot connect ({type(exc).__name__}: {exc})") from None
    kind = answer.get("type") if isinstance(answer, dict) else None
    if kind != "Scheduler":
        raise UserError(f"--scheduler {address}: that is a dask {kind or 'server'}, not a scheduler "
                        "(`dask scheduler` prints the scheduler's address)")  # fmt: skip
