"""The sweep's cost model: predicted CPU seconds of a run, and the ETA of a sweep.

Torch-free (the engine's runner.time_model does the timing). The per-image costs come from
each variant's entry in bnstudy.config.variants (measured on the project's 2-core machine, or the
fallback for a variant not measured yet). A machine is faster or slower than that one, so
before a long local CPU sweep runner.time_model times a few training steps and an evaluation pass
of its costliest run here, and the first estimate scales the costs by what it found
(`measured_speed`: a `Speed`); the ETA then rescales them by how long the finished runs actually took.
"""

from __future__ import annotations

import dataclasses
import math
import time

from bnstudy.config.settings import TEST_SIZE, RunConfig
from bnstudy.config.variants import FALLBACK_COSTS, variant

SCRATCH_SLOWDOWN = 1.0  # bn_impl = "scratch" against nn.BatchNorm


@dataclasses.dataclass(frozen=True)
class Speed:
    """How this machine's per-image costs compare with the cost model's: the factors on its
    training and its evaluation (forward) costs; `measured` when timed on this machine (measured_speed).
    `by_batch`: (batch size, training factor) where runner.time_model timed training at several
    batch sizes (the factor differs: 0.9 at 256 and 1.4 at 32 on one busy machine)."""

    train: float = 1.0
    forward: float = 1.0
    measured: bool = False
    by_batch: tuple[tuple[int, float], ...] = ()

    def train_factor(self, batch_size: int) -> float:
        """The training factor at `batch_size`: that of the timed batch size nearest in log2."""
        if not self.by_batch:
            return self.train
        return min(self.by_batch, key=lambda timed: abs(math.log2(timed[0] / batch_size)))[1]


REFERENCE = Speed()  # the machine the costs were measured on


def measured_speed(config: RunConfig, train_us: dict[int, float], forward_us: float) -> Speed:
    """The Speed of a machine on which `config`'s model trained in train_us[batch size] and
    evaluated in `forward_us` microseconds per image (runner.time_model): each against the
    cost model's per-image costs for that run; the training factor at the run's batch size
    (or the largest timed)."""
    factors = tuple((size, us / per_image_us(dataclasses.replace(config, batch_size=size))[0])
                    for size, us in sorted(train_us.items()))  # fmt: skip
    train = dict(factors).get(config.batch_size, factors[-1][1])
    return Speed(train, forward_us / per_image_us(config)[1], measured=True, by_batch=factors)


def _per_image_us(table: dict[int, float], batch_size: int) -> float:
    """Linear interpolation in log2(batch size) between measured points, flat outside them."""
    sizes = sorted(table)
    if batch_size <= sizes[0] or batch_size >= sizes[-1]:
        return table[min(max(batch_size, sizes[0]), sizes[-1])]
    high = next(size for size in sizes if size >= batch_size)
    low = sizes[sizes.index(high) - 1]
    weight = (math.log2(batch_size) - math.log2(low)) / (math.log2(high) - math.log2(low))
    return table[low] + weight * (table[high] - table[low])


def estimate_seconds(config: RunConfig, speed: Speed = REFERENCE) -> float:
    """Predicted single-thread CPU seconds of a run's training and evaluation, all epochs,
    on a machine of `speed` (default: the one the costs were measured on).

    An epoch trains on train_size images and takes evals_per_epoch points, the last at its
    end: each a test pass plus, for a BN variant, PreciseBN (its sample, then one more
    test pass). A BN variant's epoch end adds a batch-statistics test pass.
    """
    train_us, forward_us = per_image_us(config)
    entry = variant(config.variant)
    n_test = config.limit_test or TEST_SIZE
    precise_bn = min(config.precise_bn_samples, config.train_size) + n_test if entry.has_bn else 0
    batch_stats = n_test if entry.has_bn else 0
    forwards = config.evals_per_epoch * (n_test + precise_bn) + batch_stats
    micros = config.train_size * train_us * speed.train_factor(config.batch_size)
    micros += forwards * forward_us * speed.forward
    return config.epochs * micros * 1e-6


def per_image_us(config: RunConfig) -> tuple[float, float]:
    """The cost model's single-thread microseconds per training image (at the run's batch
    size) and per evaluated image of `config`."""
    entry = variant(config.variant)
    measured = entry if entry.train_us and entry.forward_us else FALLBACK_COSTS
    slowdown = SCRATCH_SLOWDOWN if config.bn_impl == "scratch" and entry.has_bn else 1.0
    return _per_image_us(measured.train_us, config.batch_size) * slowdown, measured.forward_us * slowdown


CALIBRATE_ABOVE = 60.0  # s: a sweep predicted shorter is not worth a second of measurement
def own_seconds(rows: list[dict], group_size: int = 1) -> float:
    """A run's share of the train+eval time of its rows: a fused group's rows carry the
    whole group's time, split evenly among its `group_size` members."""
    return sum(row["train_seconds"] + row["eval_seconds"] for row in rows) / group_size


class Eta:
    """The remaining wall time of a sweep: the cost model's seconds for the unfinished runs,
    scaled by actual/predicted over the finished epochs, shared among the busy workers."""

    def __init__(self, configs: list[RunConfig], workers: int, speed: Speed = REFERENCE):
        self.workers, self.speed = workers, speed
        self.runs_left = len(configs)
        self.predicted_left = sum(estimate_seconds(config, speed) for config in configs)
        self.predicted_done = self.actual_done = 0.0

    def finished(self, config: RunConfig, rows: list[dict], group_size: int = 1) -> None:
        predicted = estimate_seconds(config, self.speed)
        self.runs_left -= 1
        self.predicted_left -= predicted
        self.predicted_done += predicted * len(rows) / config.epochs
        self.actual_done += own_seconds(rows, group_size)

    def seconds(self) -> float:
        scale = self.actual_done / self.predicted_done if self.predicted_done else 1.0
        return max(self.predicted_left, 0.0) * scale / max(1, min(self.workers, self.runs_left))


def format_duration(seconds: float) -> str:
    """400d01h (from two days on), 3h05m, 12m40s or 7s. Every setting is bounded, so the
    largest sweep allowed still reads in days."""
    seconds = round(seconds)
    if seconds >= 2 * 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


