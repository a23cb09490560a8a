"""The sweep's cost model: predicted CPU seconds of a run, and the ETA of a sweep.

Torch-free. The per-image costs come from each variant's entry in bnstudy.variants (the
measured figures, or the fallback for a variant not measured yet); only the first
estimate rests on them: the ETA rescales them by how long the finished runs actually took.
"""

from __future__ import annotations

import math

from bnstudy.settings import TEST_SIZE, RunConfig
from bnstudy.variants import FALLBACK_COSTS, variant

SCRATCH_SLOWDOWN = 1.0  # bn_impl = "scratch" against nn.BatchNorm


def _per_image_us(table: dict[int, float], batch_size: int) -> float:
    """Linear interpolation in log2(batch size) between measured points, flat outside them."""
    sizes = sorted(table)
    if batch_size <= sizes[0] or batch_size >= sizes[-1]:
        return table[min(max(batch_size, sizes[0]), sizes[-1])]
    high = next(size for size in sizes if size >= batch_size)
    low = sizes[sizes.index(high) - 1]
    weight = (math.log2(batch_size) - math.log2(low)) / (math.log2(high) - math.log2(low))
    return table[low] + weight * (table[high] - table[low])


def estimate_seconds(config: RunConfig) -> float:
    """Predicted single-thread CPU seconds of a run's training and evaluation, all epochs.

    An epoch trains on train_size images and takes evals_per_epoch points, the last at its
    end: each a test pass plus, for a BN variant, PreciseBN (its sample, then one more
    test pass). A BN variant's epoch end adds a batch-statistics test pass.
    """
    entry = variant(config.variant)
    measured = entry if entry.train_us and entry.forward_us else FALLBACK_COSTS
    n_test = config.limit_test or TEST_SIZE
    precise_bn = min(config.precise_bn_samples, config.train_size) + n_test if entry.has_bn else 0
    batch_stats = n_test if entry.has_bn else 0
    forwards = config.evals_per_epoch * (n_test + precise_bn) + batch_stats
    micros = config.train_size * _per_image_us(measured.train_us, config.batch_size)
    micros += forwards * measured.forward_us
    slowdown = SCRATCH_SLOWDOWN if config.bn_impl == "scratch" and entry.has_bn else 1.0
    return config.epochs * micros * slowdown * 1e-6


def own_seconds(rows: list[dict], group_size: int = 1) -> float:
    """A run's share of the train+eval time of its rows: a fused group's rows carry the
    whole group's time, split evenly among its `group_size` members."""
    return sum(row["train_seconds"] + row["eval_seconds"] for row in rows) / group_size


class Eta:
    """The remaining wall time of a sweep: the cost model's seconds for the unfinished runs,
    scaled by actual/predicted over the finished epochs, shared among the busy workers."""

    def __init__(self, configs: list[RunConfig], workers: int):
        self.workers = workers
        self.runs_left = len(configs)
        self.predicted_left = sum(map(estimate_seconds, configs))
        self.predicted_done = self.actual_done = 0.0

    def finished(self, config: RunConfig, rows: list[dict], group_size: int = 1) -> None:
        predicted = estimate_seconds(config)
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


