"""Scheduling runs: execute one run and record its outcome.

`execute` is the unit every front end shares: `bnstudy run` calls it directly; the sweep
calls it in worker processes, on a GPU, or on dask workers, and writes what it returns.
"""

from __future__ import annotations

import traceback
from typing import Callable

import torch

from bnstudy.data import FashionMNIST
from bnstudy.errors import UserError
from bnstudy.spec import RunConfig
from bnstudy.store import device_name, now, run_metadata
from bnstudy.train import fit


def execute(config: RunConfig, data: FashionMNIST, on_epoch: Callable[[dict], None] | None = None,
            catch: bool = True) -> tuple[list[dict], dict]:  # fmt: skip
    """Fit `config` on `data` and return (rows, metadata for the run's JSON).

    With `catch`, an exception inside training is recorded as status "failed" (its error
    and traceback in the metadata, the rows finished so far kept) instead of propagating.
    """
    device = data.train_x.device
    started = now()
    rows: list[dict] = []

    def keep(row: dict) -> None:
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)

    try:
        status = fit(config, data, on_epoch=keep).status
        error = None
    except Exception as exc:  # noqa: BLE001  (recorded, the sweep goes on)
        if not catch:
            raise
        status, error = "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    return rows, run_metadata(config, status, device_name(device), started, now(), error, len(rows))


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when available, else the CPU; "cuda" without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device: unknown device {name!r}; expected auto, cpu or cuda")
    return torch.device(name)
