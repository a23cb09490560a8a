"""The dask backend, Dask: the workers of a dask cluster, each resolving --device for
itself. Its Options: DaskOptions (--scheduler, and a tls:// scheduler's certificates, TLS:
check_tls); connecting (_check_scheduler, _dask_client, _security) and each task's outcome
(_outcome). (dask_cluster, not dask: a module named dask here would shadow, for a reader,
the dask package it imports.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bnstudy.errors import UserError
from bnstudy.results.store import check_path
from bnstudy.sweep.backends.base import Backend, RunTasks, TaskFailure, TaskFn, resolve_device


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
