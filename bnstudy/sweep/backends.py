"""Where a sweep's tasks execute: one class per backend behind one interface, `Backend` (as
Hydra's launchers have it), and one registry, BACKENDS, at the end of this module: the only
place a backend is named. The CLI's --backend choices and each backend's flags come from it.

- InProcess: this process trains the tasks one after another.
- LocalProcesses: worker processes on this machine, one per CPU core or one per GPU, each
  claiming a slot; a single slot (one job, one GPU) is InProcess.
- Dask: the workers of a dask cluster.

A backend's life in a sweep: `options_from(args)` reads its flags into its Options (a
dataclass beside the class); `plan(options, device, fuse)` checks them and picks the
workers, connecting to nothing; `open(task_fn)` is a context manager yielding (run,
workers): run(tasks) yields (index, outcome) for each task as soon as it finishes, in any
order: the task's position in `tasks` and task_fn's result, or a TaskFailure for a task that
gave none (task_fn raised, or its dask worker kept dying). The index, not the result, says
which task it was: the driver checks each result against its own runs (bnstudy.sweep.driver). The
task function is handed in, task_fn(task, device), with device the torch device name the
backend picked for the worker that runs it ("cpu", "cuda", "cuda:1"). A backend knows
nothing of training, and training nothing of backends.

Adding a backend (Ray, SLURM): a Backend subclass with its Options, flags, plan, describe
and open, and one line in BACKENDS; tests/sweep/test_backends.py's contract suite then runs on it.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import multiprocessing.resource_tracker
import os
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, ContextManager, Iterable

from bnstudy.errors import UserError
from bnstudy.results.store import check_path

TaskFn = Callable[[list, str], list]  # (task, torch device name) -> the task's results


@dataclass(frozen=True)
class TaskFailure:
    """A task that gave no result: its function raised, its dask worker died running it more
    often than the scheduler allows (distributed.scheduler.allowed-failures), or the worker
    could not run it at all. `error`: a one-line reason, then details; the sweep records the
    task's runs as failed with it, so that the next sweep reruns them."""

    task: list
    error: str

    @classmethod
    def raised(cls, task: list, exc: BaseException, where: str) -> TaskFailure:
        """The failure of a task whose function raised `exc` `where` ("in this process")."""
        return cls(task, f"{type(exc).__name__} {where}: {exc}\n{''.join(traceback.format_exception(exc))}")


def call_task(task_fn: TaskFn, task: list, device: str, where: str) -> list | TaskFailure:
    """task_fn's result for `task` on `device`, or a TaskFailure when it raises: the sweep
    records that task's runs failed and goes on (runner.worker_task never raises; another
    task function may)."""
    try:
        return task_fn(task, device)
    except Exception as exc:  # noqa: BLE001  (a Ctrl-C, a BaseException, still stops the sweep)
        return TaskFailure.raised(task, exc, where)


# tasks -> (index in tasks, outcome) for each task as it finishes
RunTasks = Callable[[list[list]], Iterable["tuple[int, list | TaskFailure]"]]


@dataclass(frozen=True)
class NoOptions:
    """The Options of a backend without flags of its own."""


class Backend(abc.ABC):
    """Where a sweep's tasks run. An instance is a backend as `plan` set it up for one sweep
    (a frozen dataclass of what it picked); `open` runs the tasks.

    Every instance has `device`, the runs' device as the driver records it (a failed run's
    JSON, the CPU estimate): "cpu" or "cuda" when the runs train on this machine, the
    --device name itself (auto, cpu, cuda) for workers that resolve their own; `fuse`,
    False for --no-fuse; and `local_workers`, how many worker processes this machine runs
    (0: the runs train elsewhere, so the sweep neither checks the dataset nor times its
    runs here).
    """

    summary: ClassVar[str]  # what it is, for `bnstudy sweep --help`
    Options: ClassVar[type] = NoOptions
    device: str
    fuse: bool
    local_workers: int

    @classmethod
    def add_flags(cls, group: argparse._ArgumentGroup) -> None:
        """Add this backend's flags to `group` (the sweep parser's group for it), one per
        field of Options, named after it (dest = field name)."""

    @classmethod
    def options_from(cls, args: argparse.Namespace):
        """This backend's Options from the parsed command line."""
        return cls.Options(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls.Options)})

    @classmethod
    def check_unused(cls, options) -> None:
        """For a sweep on another backend: UserError where this one's flags were given and
        ignoring them would mislead. By default they are ignored."""

    @classmethod
    @abc.abstractmethod
    def plan(cls, options, device: str, fuse: bool) -> Backend:
        """Check `options` and pick the workers for a sweep on `device` (--device: auto,
        cpu or cuda), fusing runs of one shape unless `fuse` is off. Connects to nothing;
        UserError for a bad combination or a device that is not here."""

    @property
    def grouped(self) -> bool:
        """Whether tasks hold the runs of one shape, trained as fused groups: on CUDA unless
        --no-fuse; else one run each (on the CPU a fused group is slower than solo runs)."""
        return self.device == "cuda" and self.fuse

    def fused(self) -> str:
        """What describe() adds for grouped tasks."""
        return ", runs of one shape fused into one network" if self.grouped else ""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the runs train, in words: the sweep's "running on ..." and its dry run."""

    @abc.abstractmethod
    def open(self, task_fn: TaskFn) -> ContextManager[tuple[RunTasks, int]]:
        """Set up for the sweep's duration. Yields (run, workers): run(tasks) yields (index,
        outcome) for each task as soon as it finishes, in any order, calling task_fn(task,
        device) on a worker; workers sizes the estimates (0: none yet, the runs wait)."""


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


# ---------------------------------------------------------------- this process
@dataclass(frozen=True)
class InProcess(Backend):
    """This process trains the tasks one after another: a backend of its own, and what the
    local one plans for a single slot."""

    summary = "this process trains the runs one after another"
    device: str  # "cpu" or "cuda"
    fuse: bool = True
    local_workers: ClassVar[int] = 1

    @classmethod
    def plan(cls, options: NoOptions, device: str, fuse: bool) -> InProcess:
        return cls(resolve_device(device).type, fuse)

    def describe(self) -> str:
        return f"{self.device} in this process" + (", one torch thread" if self.device == "cpu" else "") + self.fused()

    @contextlib.contextmanager
    def open(self, task_fn: TaskFn):
        def run(tasks):
            return ((i, call_task(task_fn, task, self.device, "in this process")) for i, task in enumerate(tasks))

        yield run, 1


# ---------------------------------------------------------------- local worker processes
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
        with _workers_start_deaf_to_sigint():  # the workers start in this call
            outcomes = parallel(delayed(_in_worker)(task_fn, i, task) for i, task in enumerate(tasks))
        try:
            yield from outcomes
        except BrokenProcessPool:
            raise UserError("a local worker process died (killed, or out of memory?); finished runs are kept, "
                            "the same command reruns the rest") from None  # fmt: skip

    return run


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


# ---------------------------------------------------------------- the dask cluster
@dataclass(frozen=True)
class DaskOptions:
    """--scheduler, and a tls:// scheduler's certificates (None: dask's configuration's)."""

    scheduler: str | None = None
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(frozen=True)
class TLS:
    """A tls:// scheduler's certificates from --tls-ca-file, --tls-cert and --tls-key (the key may be in the cert)."""

    ca_file: str
    cert: str
    key: str | None = None


@dataclass(frozen=True)
class Dask(Backend):
    """The workers of a dask cluster (`dask scheduler`, then `dask worker ADDR --nthreads 1`),
    each resolving --device for itself."""

    summary = "the workers of a dask cluster (README: More machines)"
    Options = DaskOptions
    device: str  # --device: auto, cpu or cuda, as each worker resolves it
    scheduler: str
    fuse: bool = True
    tls: TLS | None = None  # None: dask's configuration's certificates, if any
    local_workers: ClassVar[int] = 0

    @classmethod
    def add_flags(cls, group) -> None:
        group.add_argument("--scheduler", default=None, metavar="ADDR",
                           help="the dask scheduler, e.g. tcp://127.0.0.1:8786, or tls://HOST:8786 with certificates")
        for name, what in (("ca-file", "the dask cluster's CA certificate"), ("cert", "this client's certificate"),
                           ("key", "this client's private key (if not in --tls-cert's file)")):  # fmt: skip
            group.add_argument(f"--tls-{name}", type=check_path, default=None, metavar="FILE",
                               help=f"for a tls:// scheduler: {what} (default: dask's configuration)")

    @classmethod
    def check_unused(cls, options: DaskOptions) -> None:
        if options.scheduler:
            raise UserError("--scheduler is for --backend dask")
        if any((options.tls_ca_file, options.tls_cert, options.tls_key)):
            raise UserError("--tls-ca-file, --tls-cert and --tls-key are for --backend dask with a tls:// scheduler")

    @classmethod
    def plan(cls, options: DaskOptions, device: str, fuse: bool) -> Dask:
        if not options.scheduler:
            raise UserError("--backend dask needs --scheduler tcp://HOST:PORT (a running dask scheduler)")
        tls = check_tls(options.scheduler, options.tls_ca_file, options.tls_cert, options.tls_key)
        return cls(device, options.scheduler, fuse, tls)

    def describe(self) -> str:
        tls = "TLS" if _scheme(self.scheduler) == "tls" else "no TLS: any client that reaches it runs code there"
        return (f"the dask cluster at {self.scheduler} ({tls}; device {self.device}; one run at a time per worker "
                f"process, so start workers with --nthreads 1)")  # fmt: skip

    @contextlib.contextmanager
    def open(self, task_fn: TaskFn):
        """UserError when no dask scheduler answers at the address."""
        with _dask_client(self.scheduler, self.tls) as client:
            # Workers may join later (0 now: the sweep says it waits); the count sizes the estimates.
            yield _dask_runner(client, task_fn, self.device), len(client.nthreads())


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


def _dask_runner(client, task_fn: TaskFn, device: str) -> RunTasks:
    """Submit every task to the cluster, earliest first (costliest, as make_tasks orders
    them), and yield each outcome as it finishes. distributed reruns a task whose worker
    died on another worker (or the same one, restarted by its nanny); `_outcome` turns a
    task it gave up on into a TaskFailure."""
    from distributed import as_completed

    def run(tasks):
        futures = {client.submit(_on_dask_worker, task_fn, task, device, pure=False): (i, task)
                   for i, task in enumerate(tasks)}  # fmt: skip
        for future in as_completed(list(futures), loop=client.loop):
            # Popped, so that the cluster can drop a result once it is here.
            index, task = futures.pop(future)
            yield index, _outcome(future, task, client.scheduler.address)

    return run


def _on_dask_worker(task_fn: TaskFn, task: list, device: str) -> list:
    """On a dask worker: task_fn on this worker's `device` (--device, resolved here: "auto"
    is this machine's GPU if it has one). A device that is not here raises, so the task
    comes back a TaskFailure saying so."""
    return task_fn(task, str(resolve_device(device)))


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
    if not isinstance(exc, KilledWorker):  # worker_task catches training errors: this one is the worker's own
        return TaskFailure.raised(task, exc, "on a dask worker")  # (e.g. no bnstudy there, no such device)
    deaths = exc.allowed_failures + 1
    died = "died once" if deaths == 1 else f"died {deaths} times, the last"
    summary = f"KilledWorker: the dask worker running this task {died} on {exc.last_worker.address}; see its log"
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


# ---------------------------------------------------------------- the registry
BACKENDS: dict[str, type[Backend]] = {"local": LocalProcesses, "inprocess": InProcess, "dask": Dask}
DEFAULT_BACKEND = next(iter(BACKENDS))  # the first: --backend's default


def chosen_options(args: argparse.Namespace):
    """The Options of the backend `args.backend` names, from the parsed command line;
    UserError where another backend's flags were given that it refuses (`check_unused`)."""
    chosen = None
    for name, backend in BACKENDS.items():
        options = backend.options_from(args)  # every backend's, so that each checks its own flags
        if name == args.backend:
            chosen = options
        else:
            backend.check_unused(options)
    return chosen


def plan_backend(name: str, options, device: str, fuse: bool = True) -> Backend:
    """The backend `name` planned for a sweep (Backend.plan) from its `options` (None: its
    defaults); UserError for a name that is not in BACKENDS."""
    if name not in BACKENDS:
        raise UserError(f"--backend: unknown backend {name!r}; expected {', '.join(BACKENDS)}")
    backend = BACKENDS[name]
    return backend.plan(backend.Options() if options is None else options, device, fuse)
