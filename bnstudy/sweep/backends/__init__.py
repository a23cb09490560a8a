"""Where a sweep's tasks execute: one class per backend behind one interface, `Backend` (as
Hydra's launchers have it; base.py), one module per backend, and one registry, BACKENDS, in
this module: the only place a backend is named. The CLI's --backend choices and each
backend's flags come from it.

- InProcess (inprocess.py): this process trains the tasks one after another.
- LocalProcesses (local.py): worker processes on this machine, one per CPU core or one per
  GPU, each claiming a slot; a single slot (one job, one GPU) is InProcess.
- Dask (dask_cluster.py): the workers of a dask cluster.

A backend's life in a sweep is base.py's docstring. The rest of bnstudy imports the
backends from here: the registry (BACKENDS, DEFAULT_BACKEND, chosen_options, plan_backend),
the interface's names it uses (Backend, TaskFailure, call_task, resolve_device) and the
backends' classes.

Adding a backend (Ray, SLURM): a module here with a Backend subclass and its Options, flags,
plan, describe and open, and one line in BACKENDS; tests/sweep/test_backends.py's contract
suite then runs on it (what only it does: tests/sweep/backends/test_<module>.py).
"""

from __future__ import annotations

import argparse

from bnstudy.errors import UserError
from bnstudy.sweep.backends.base import Backend, TaskFailure, call_task, resolve_device
from bnstudy.sweep.backends.dask_cluster import Dask
from bnstudy.sweep.backends.inprocess import InProcess
from bnstudy.sweep.backends.local import LocalProcesses

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "Dask", "InProcess", "LocalProcesses", "TaskFailure",
           "call_task", "chosen_options", "plan_backend", "resolve_device"]  # fmt: skip

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
