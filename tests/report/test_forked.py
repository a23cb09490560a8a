"""bnstudy.report.forked: map_forked gives what a loop gives, each item done once, across
processes; a child's exception or death reaches the caller; ending early leaves no child
running; children leave Ctrl-C to the caller."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import time
from pathlib import Path

import pytest

from bnstudy.errors import UserError
from bnstudy.report import forked
from bnstudy.report.forked import ChildDied, map_forked

PARENT = os.getpid()


def in_child() -> bool:
    return os.getpid() != PARENT


def slow_here(seconds: float = 0.3) -> None:
    """Keep this process busy, so that the children surely take items."""
    if not in_child():
        time.sleep(seconds)


@pytest.mark.parametrize("jobs", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 7])
def test_results_are_the_loops_in_order(jobs, n):
    assert map_forked(lambda x: (x, x * x), range(n), jobs) == [(x, x * x) for x in range(n)]


def test_each_item_is_done_once_and_children_share_the_work(tmp_path):
    def mark(i: int) -> int:
        time.sleep(0.1)  # in every process: each takes its next item when done with one
        (tmp_path / f"{i}.{os.getpid()}").touch()
        return os.getpid()

    pids = map_forked(mark, range(8), 3)
    done = sorted(int(p.name.split(".")[0]) for p in tmp_path.iterdir())
    assert done == list(range(8))  # once each: no item lost, none done twice
    assert PARENT in pids and len(set(pids)) > 1


def test_a_childs_exception_is_raised_with_its_traceback(tmp_path):
    def write(i: int) -> None:
        slow_here()
        if in_child():
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / f"{i}.png"))

    with pytest.raises(OSError) as caught:
        map_forked(write, range(4), 2)
    assert (caught.value.errno, caught.value.strerror) == (errno.ENOSPC, "No space left on device")
    assert caught.value.filename.startswith(str(tmp_path))
    assert any("in a forked child" in note and "in write" in note for note in caught.value.__notes__)


class Unpicklable(Exception):
    def __reduce__(self):
        raise pickle.PicklingError("not this one")


def test_an_exception_that_does_not_pickle_arrives_as_its_text():
    def fail(i: int) -> None:
        slow_here()
        if in_child():
            raise Unpicklable("a lock in its arguments")

    with pytest.raises(RuntimeError, match="Unpicklable: a lock in its arguments"):
        map_forked(fail, range(4), 2)


def test_a_child_that_dies_raises_child_died():
    def die(i: int) -> None:
        slow_here()
        if in_child():
            os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ChildDied, match=r"killed by signal 9"):
        map_forked(die, range(4), 2)


@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError])
def test_ending_early_kills_every_child_first(tmp_path, error):
    def work(i: int) -> None:
        if not in_child():
            time.sleep(0.3)  # the children have started their items by now
            raise error("stop")
        (tmp_path / f"started.{os.getpid()}").touch()
        time.sleep(0.8)
        (tmp_path / f"finished.{os.getpid()}").touch()  # must never happen: killed before

    with pytest.raises(error):
        map_forked(work, range(6), 3)
    started = [int(p.suffix[1:]) for p in tmp_path.glob("started.*")]
    assert started, "no child took an item"
    for pid in started:
        with pytest.raises(ChildProcessError):  # reaped: no child of ours any more
            os.waitpid(pid, os.WNOHANG)
    time.sleep(1)
    assert not list(tmp_path.glob("finished.*"))


def test_children_ignore_ctrl_c_and_leave_it_to_the_caller():
    def interrupted(i: int) -> int:
        slow_here()
        if in_child():
            os.kill(os.getpid(), signal.SIGINT)  # what a terminal's Ctrl-C sends the whole group
        return i

    assert map_forked(interrupted, range(4), 2) == [0, 1, 2, 3]


def test_jobs_are_checked_and_default_to_the_cores(monkeypatch):
    forked.check_jobs(1)
    for bad in (0, forked.MAX_JOBS + 1):
        with pytest.raises(UserError, match=f"--jobs: must be between 1 and {forked.MAX_JOBS}"):
            forked.check_jobs(bad)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert forked.default_jobs() == forked.DEFAULT_JOBS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert forked.default_jobs() == 1
    monkeypatch.setattr(forked.sys, "platform", "darwin")  # no fork there
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert forked.default_jobs() == 1


def test_too_many_items_are_refused_before_any_fork():
    with pytest.raises(ValueError, match="at most"):
        map_forked(lambda x: x, range(forked.MAX_ITEMS + 1), 2)


def test_no_file_descriptor_is_left_open():
    before = set(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else None
    if before is None:
        pytest.skip("no /proc/self/fd here")
    map_forked(lambda x: x, range(5), 3)
    with pytest.raises(ValueError):
        map_forked(lambda x: (_ for _ in ()).throw(ValueError("no")), range(5), 3)
    assert set(os.listdir("/proc/self/fd")) == before
