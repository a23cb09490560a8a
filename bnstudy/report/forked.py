"""A map over forked copies of this process: how a report draws its figures on every core.

    map_forked(fn, items, jobs) == [fn(item) for item in items]

This process and jobs - 1 children forked from it take the items' indices one at a time
from a pipe, so a process that drew a cheap figure takes the next one (the kernel hands
each 4-byte record to one reader). A child inherits fn, its data and every open file (the
report's lock included, so another report waits until the last child is done), and pickles
nothing but its results back. Fork, not spawn: a spawned child would import pandas, scipy
and matplotlib again, which costs as much as the figures it draws. Forking is the default
on Linux only (`default_jobs`): on macOS a forked child may crash in system libraries.

Faults, in the spirit of the rest of the report (all or nothing):
- An exception in this process is raised at once; one in a child (which then takes no more
  items) is raised here once its result is collected, with the child's traceback as a note.
- A child that dies without a result (killed, out of memory) raises ChildDied.
- Whatever ends this call early (an exception here, Ctrl-C) first kills and reaps every
  child, so that nothing a child does outlives the call; children ignore Ctrl-C (the
  terminal sends it to them too) and leave it to this process.
- If this process is killed (kill -9), its children finish their items and exit.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import traceback
from typing import Callable, Iterable, TypeVar

from bnstudy.errors import UserError

T = TypeVar("T")
R = TypeVar("R")
MAX_JOBS = 64  # --jobs above this is a typo (a report has 9 figures at most: more would idle)
DEFAULT_JOBS = 4  # the default's cap: past 4 processes a fork costs about what the figures it draws save
RECORD = 4  # bytes per item index in the queue pipe
MAX_ITEMS = 4096  # their records fit in a pipe's buffer (64 KiB on Linux), written before any fork


class ChildDied(RuntimeError):
    """A forked child ended without sending its results."""


def check_jobs(jobs: int) -> None:
    """UserError unless 1 <= jobs <= MAX_JOBS (a request for more is a typo)."""
    if not 1 <= jobs <= MAX_JOBS:
        raise UserError(f"--jobs: must be between 1 and {MAX_JOBS} (got {jobs})")


def default_jobs() -> int:
    """Processes for map_forked here: one per usable core up to DEFAULT_JOBS on Linux, else 1."""
    if not sys.platform.startswith("linux"):
        return 1
    return max(1, min(DEFAULT_JOBS, len(os.sched_getaffinity(0))))


def map_forked(fn: Callable[[T], R], items: Iterable[T], jobs: int) -> list[R]:
    """[fn(item) for item in items], over `jobs` processes (this one and jobs - 1 forked
    children; fewer when there are fewer items). Side effects: forks; the children's side
    effects (files they write) are theirs. See the module docstring for faults."""
    items = list(items)
    if len(items) > MAX_ITEMS:
        raise ValueError(f"map_forked takes at most {MAX_ITEMS} items, not {len(items)}")
    jobs = max(1, min(jobs, len(items)))
    if jobs == 1:
        return [fn(item) for item in items]
    queue, fill = os.pipe()
    os.write(fill, b"".join(i.to_bytes(RECORD, "little") for i in range(len(items))))
    os.close(fill)  # no writer left: a read of the drained queue returns b"" in every process
    children: list[tuple[int, int]] = []  # (pid, read end of its result pipe), until collected
    try:
        for _ in range(jobs - 1):
            children.append(_fork(fn, items, queue))
        results = dict(_take(fn, items, queue))
        while children:
            results.update(_collect(*children.pop(0)))
        return [results[i] for i in range(len(items))]
    finally:
        os.close(queue)
        for pid, fd in children:  # only when ending early: stop them before anything else happens
            _kill(pid)
            os.close(fd)


def _take(fn: Callable[[T], R], items: list[T], queue: int) -> list[tuple[int, R]]:
    """[(i, fn(items[i]))] for each index i taken from the pipe `queue` until it is drained."""
    done = []
    while record := os.read(queue, RECORD):
        i = int.from_bytes(record, "little")
        done.append((i, fn(items[i])))
    return done


def _fork(fn: Callable[[T], R], items: list[T], queue: int) -> tuple[int, int]:
    """Fork a child that takes items from `queue` (_take), sends ("ok", its [(i, result)])
    or ("error", exception) down a pipe and exits; (its pid, the pipe's read end)."""
    read, write = os.pipe()
    for stream in (sys.stdout, sys.stderr):  # else a child that prints would write this process's pending output too
        stream.flush()
    pid = os.fork()
    if pid:
        os.close(write)
        return pid, read
    try:  # the child: never returns, never runs this process's cleanup (os._exit)
        os.close(read)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            data = pickle.dumps(("ok", _take(fn, items, queue)))
        except BaseException as exc:  # noqa: BLE001  (sent to the parent, which raises it)
            data = pickle.dumps(("error", _portable(exc)))
        with os.fdopen(write, "wb") as pipe:
            pipe.write(data)
    finally:
        os._exit(0)


def _portable(exc: BaseException) -> BaseException:
    """exc with its traceback as a note, or a RuntimeError of its text if it does not pickle."""
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001  (any failure to pickle: send what can be sent)
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    exc.add_note(f"in a forked child (bnstudy.report.forked):\n{text}")
    return exc


def _kill(pid: int) -> None:
    """Kill child `pid` and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _collect(pid: int, fd: int) -> list[tuple[int, object]]:
    """The [(i, result)] of child `pid` from its pipe `fd` (closed here), once it has
    exited; its exception raised here, or ChildDied if it sent nothing."""
    try:
        with os.fdopen(fd, "rb") as pipe:
            data = pipe.read()
    except BaseException:  # Ctrl-C while waiting: the child stops now, not once it is done
        _kill(pid)
        raise
    _, status = os.waitpid(pid, 0)
    if not data:
        code = os.waitstatus_to_exitcode(status)
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        raise ChildDied(f"a forked child ended without its results ({how})")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise value
    return value
