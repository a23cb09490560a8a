"""The inprocess backend, InProcess: this process trains the tasks one after another (also
what the local backend plans for a single slot)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

from bnstudy.sweep.backends.base import Backend, NoOptions, TaskFn, call_task, resolve_device


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
