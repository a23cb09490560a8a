"""The interface every backend implements and what every backend shares: `Backend`, the
Options of a backend without flags (NoOptions), a task's outcome (TaskFailure, call_task)
and the device a worker resolves (resolve_device).

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
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import traceback
from dataclasses import dataclass
from typing import Callable, ClassVar, ContextManager, Iterable

from bnstudy.errors import UserError

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
