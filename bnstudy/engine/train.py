"""Fit one run: per-epoch training metrics, eval-mode test metrics and BN diagnostics.

Each epoch yields one row with the columns of settings.CSV_COLUMNS (docs/DESIGN.md's schema)
and, with evals_per_epoch = k > 1, k points (settings.EVALS_COLUMNS): test accuracy at
evenly spaced steps, measured without changing the training. All per-batch accumulation
stays on the device; the host reads the epoch's numbers once.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bnstudy.engine import norms
from bnstudy.engine.data import FashionMNIST, epoch_batches, fixed_batches
from bnstudy.engine.models import build_lenet
from bnstudy.results.runfiles import RunStatus
from bnstudy.config.settings import EVALS_COLUMNS, IDENTITY_COLUMNS, RunConfig, steps_per_epoch

EVAL_BATCH_SIZE = 500  # eval-mode results do not depend on it; 500 measured fastest on the CPU (vs 256..10,000)
PRECISE_BN_SEED_OFFSET = 7919  # the PreciseBN subset's generator is independent of the data order's


@dataclass
class RunResult:
    """What fit returns, filled epoch by epoch (so that a caller keeps the finished epochs
    should training raise): rows (one dict per finished epoch, CSV_COLUMNS keys), points
    (with evals_per_epoch > 1: one dict per point of the finished epochs, EVALS_COLUMNS
    keys; else empty) and status COMPLETE or DIVERGED (the loss turned non-finite; the rows
    and points up to then are kept). runner.run_outcome makes it the run's RunOutcome."""

    rows: list[dict] = field(default_factory=list)
    points: list[dict] = field(default_factory=list)
    status: RunStatus = RunStatus.COMPLETE


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock times measure the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """Adam (PyTorch defaults) or plain SGD (no momentum, as in the textbook).

    Adam runs torch's fused kernel: the same update as the default for-loop one, to
    float rounding, at a quarter of its cost per step on the CPU."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def build_model(config: RunConfig, device: torch.device, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The run's LeNet, initialised from `config.seed` alone (torch's global RNG is reseeded)."""
    torch.manual_seed(config.seed)
    model = build_lenet(config.variant, config.bn_impl, config.activation, config.bn_momentum, config.norm,
                        config.ghost_batch_size, config.pool)  # fmt: skip
    return model.to(device=device, dtype=dtype)


def train_epoch(model, optimizer, data: FashionMNIST, batches, criterion=F.cross_entropy,
                after_step: Callable[[int], None] | None = None, before_step: Callable[[int], None] | None = None,
                frozen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One pass over `batches` (index tensors into data.train_*), train mode; with `frozen`,
    the layers with running statistics in eval mode (frozen_bn_epochs: norms.freeze).

    `criterion(logits, y)` is the mean loss of each model trained: F.cross_entropy's scalar
    for one model; a fused group (bnstudy.engine.fused) passes one that returns its G members'
    means, shape (G,). Their sum is minimised, so each member gets its own gradient.
    after_step(s), when given, is called after the s-th optimizer step (1-based) of the pass,
    before_step(s) before it (Batch Renormalization's schedule).
    Returns device tensors (sum of per-sample losses, number correct) over exactly the
    samples in `batches`, shaped like the criterion's value; no host synchronisation.
    """
    model.train()
    if frozen:
        norms.freeze(model)
    loss_sum = torch.zeros((), device=data.train_x.device, dtype=torch.float64)
    correct = torch.zeros((), device=data.train_x.device, dtype=torch.int64)
    for step, idx in enumerate(batches, start=1):
        if before_step is not None:
            before_step(step)
        x, y = data.train_x[idx], data.train_y[idx]
        logits = model(x)
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        # out of place and summed over dim 0 only, so a group's sums stay one per member
        loss_sum = loss_sum + loss.detach().double() * len(idx)
        correct = correct + (logits.detach().argmax(dim=1) == y).sum(dim=0)
        if after_step is not None:
            after_step(step)
    return loss_sum, correct


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             criterion=F.cross_entropy) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(sum of losses, number correct) over all of x, in the model's *current* mode, as
    device tensors, one per model (`criterion` as in train_epoch, called with
    reduction="sum"). Changes nothing only in eval mode: see `preserved_state`."""
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for idx in fixed_batches(len(x), batch_size, x.device):
        logits = model(x[idx])
        loss_sum = loss_sum + criterion(logits, y[idx], reduction="sum").double()
        correct = correct + (logits.argmax(dim=1) == y[idx]).sum(dim=0)
    return loss_sum, correct


@contextlib.contextmanager
def preserved_state(model: nn.Module):
    """Run a diagnostic that may touch BN statistics, then put back every buffer (running
    statistics, batch counters), the norm layers' tunable attributes (BN momenta, Batch
    Renormalization's limits, ghost batches' averaging: norms.TUNABLE) and every module's
    train/eval mode (a frozen layer stays in eval mode in a training model) as they were."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    tuned = [(m, {a: getattr(m, a) for a in norms.TUNABLE if hasattr(m, a)}) for m in norms.tunable_layers(model)]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
        for m, attributes in tuned:
            for name, value in attributes.items():
                setattr(m, name, value)
        for m, training in modes:
            m.training = training


def accuracy_with_batch_stats(model, data: FashionMNIST, batch_size: int) -> torch.Tensor:
    """Number correct on the test set with every BN layer normalising by the statistics of
    the test batch it sees (train-mode BN, batches of the run's size, no gradients)."""
    with preserved_state(model):
        model.train()
        norms.batch_statistics(model)
        return evaluate(model, data.test_x, data.test_y, batch_size)[1]


@torch.no_grad()
def recompute_population_stats(model, x: torch.Tensor, batch_size: int) -> None:
    """PreciseBN: replace every BN layer's running statistics by the plain average of the
    batch statistics over `x` (weights frozen). Setting momentum = 1/(k+1) before batch k
    turns the exponential average into an arithmetic one (a ghost batch layer counts its
    ghost batches instead: norms.averaging); each layer normalises by its batch's
    statistics alone (norms.batch_statistics). Mutates the model's buffers and tunable
    attributes: call it inside `preserved_state`."""
    layers = norms.running_stat_layers(model)
    for m in layers:
        m.reset_running_stats()
    model.train()
    norms.batch_statistics(model)
    with norms.averaging(model):
        for k, idx in enumerate(fixed_batches(len(x), batch_size, x.device)):
            for m in layers:
                m.momentum = 1.0 / (k + 1)
            model(x[idx])


def accuracy_with_precise_bn(model, data: FashionMNIST, subset: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Number correct on the test set (eval mode) after PreciseBN on data.train_x[subset];
    the model's own running statistics are restored afterwards."""
    with preserved_state(model):
        recompute_population_stats(model, data.train_x[subset], batch_size)
        model.eval()
        return evaluate(model, data.test_x, data.test_y, EVAL_BATCH_SIZE)[1]


def point_counts(model, data: FashionMNIST, subset: torch.Tensor | None, batch_size: int,
                 criterion=F.cross_entropy) -> list[torch.Tensor]:  # fmt: skip
    """One point of the finer curve, taken mid-training: [number correct on the test set in
    eval mode] + (when `subset` is given) [number correct after PreciseBN on it], device
    tensors shaped like the criterion's value (`criterion` as in train_epoch). Parameters,
    buffers, BN momenta and the train/eval mode are as before afterwards (preserved_state)."""
    with preserved_state(model):
        model.eval()
        counts = [evaluate(model, data.test_x, data.test_y, EVAL_BATCH_SIZE, criterion)[1]]
    if subset is not None:
        counts.append(accuracy_with_precise_bn(model, data, subset, batch_size))
    return counts


def point_steps(steps: int, k: int) -> list[int]:
    """The steps of an epoch of `steps` steps (1-based) after which its k points are taken:
    round(j * steps / k) for j = 1..k (Python's round: halves to even). Evenly spaced, the
    last the epoch's end; distinct when k <= steps (settings.validate's rule for a run's
    own data), ValueError otherwise."""
    if not 1 <= k <= steps:
        raise ValueError(f"{k} points cannot fall after distinct steps of an epoch of {steps}")
    return [round(j * steps / k) for j in range(1, k + 1)]


class PointMeter:
    """train_epoch's after_step hook that takes the points inside an epoch: after each step in
    `steps` it calls measure() (a list of device tensors, see point_counts) and keeps the
    result in `counts`, one list per point, unread (no host synchronisation but the clock's).
    `seconds`: the device-synchronised time spent measuring, which is evaluation, not training."""

    def __init__(self, steps: Sequence[int], measure: Callable[[], list[torch.Tensor]], device: torch.device):
        self.steps, self.measure, self.device = set(steps), measure, device
        self.counts: list[list[torch.Tensor]] = []
        self.seconds = 0.0

    def __call__(self, step: int) -> None:
        if step not in self.steps:
            return
        sync(self.device)
        start = time.perf_counter()
        self.counts.append(self.measure())
        sync(self.device)
        self.seconds += time.perf_counter() - start


def precise_bn_subset(config: RunConfig, num_train: int, device) -> torch.Tensor:
    """The run's fixed random PreciseBN sample: min(precise_bn_samples, num_train) training
    indices drawn from the run's seed, the same for every epoch."""
    generator = torch.Generator().manual_seed(config.seed + PRECISE_BN_SEED_OFFSET)
    return torch.randperm(num_train, generator=generator)[: config.precise_bn_samples].to(device)


def identity_fields(config: RunConfig) -> dict:
    """The identity columns of a row."""
    return {"run_id": config.run_id, **{k: getattr(config, k) for k in IDENTITY_COLUMNS[1:]}}


def with_dtype(data: FashionMNIST, dtype: torch.dtype) -> FashionMNIST:
    """`data` with its images in `dtype` (labels untouched); `data` itself if they already are."""
    if dtype == data.train_x.dtype:
        return data
    return FashionMNIST(data.train_x.to(dtype), data.train_y, data.test_x.to(dtype), data.test_y)


def train_and_evaluate(model, optimizer, data: FashionMNIST, draw_batches: Callable[[], list[torch.Tensor]],
                       batch_size: int, subset: torch.Tensor | None, criterion=F.cross_entropy,
                       inner_steps: Sequence[int] = (), before_step: Callable[[int], None] | None = None,
                       frozen: bool = False) -> tuple[list, list, float, float]:  # fmt: skip
    """One epoch: train on draw_batches() (drawn inside the timed span: the epoch's cost;
    `before_step` and `frozen` as in train_epoch), taking a point (point_counts) after
    each step in `inner_steps`; then evaluate in eval
    mode and, when `subset` is given (the model has BN), the batch-statistics and PreciseBN
    diagnostics (`batch_size`: the run's).

    Returns (sums, inner, train_seconds, eval_seconds): device-synchronised wall times
    (the points' time is evaluation's); sums = [train loss sum, train correct, test loss
    sum, test correct] + (with `subset`) [batch-stats correct, PreciseBN correct]; inner =
    one [test correct] + (with `subset`) [PreciseBN correct] per inner step; each number a
    float for one model, a list of G floats for a fused group (`criterion` as in
    train_epoch). One host read. Side effects: trains `model` (parameters, optimizer
    state, BN running statistics); the points change none of it.
    """
    device = data.train_x.device
    meter = PointMeter(inner_steps, lambda: point_counts(model, data, subset, batch_size, criterion), device)
    sync(device)
    start = time.perf_counter()
    loss_sum, correct = train_epoch(model, optimizer, data, draw_batches(), criterion, meter, before_step, frozen)
    sync(device)
    trained = time.perf_counter()
    model.eval()
    counts = [loss_sum, correct, *evaluate(model, data.test_x, data.test_y, EVAL_BATCH_SIZE, criterion)]
    if subset is not None:
        counts += [
            accuracy_with_batch_stats(model, data, batch_size),
            accuracy_with_precise_bn(model, data, subset, batch_size),
        ]
    epoch_end, width = len(counts), 2 if subset is not None else 1  # the numbers of a point, from point_counts
    counts += [c for point in meter.counts for c in point]
    values = torch.stack([c.double() for c in counts]).tolist()  # the epoch's one host read
    sync(device)
    sums, inner = values[:epoch_end], [values[i : i + width] for i in range(epoch_end, len(values), width)]
    return sums, inner, trained - start - meter.seconds, time.perf_counter() - trained + meter.seconds


def epoch_row(config: RunConfig, epoch: int, sums: list[float], n_train: int, n_test: int,
              train_seconds: float, eval_seconds: float, samples_per_second: float) -> dict:  # fmt: skip
    """One run's CSV row (CSV_COLUMNS) for `epoch`, from its model's `sums` as
    train_and_evaluate returns them (no BN-diagnostic sums: those columns are None)."""
    train_loss, train_correct, test_loss, test_correct = sums[:4]
    batch_stats, precise = (v / n_test for v in sums[4:]) if len(sums) > 4 else (None, None)
    return {
        **identity_fields(config),
        "epoch": epoch,
        "train_loss": train_loss / n_train,
        "train_acc": train_correct / n_train,
        "test_loss": test_loss / n_test,
        "test_acc": test_correct / n_test,
        "test_acc_batch_stats": batch_stats,
        "test_acc_precise_bn": precise,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "samples_per_second": samples_per_second,
    }


def epoch_points(config: RunConfig, epoch: int, steps: int, sums: list[float], inner: list[list[float]],
                 n_test: int) -> list[dict]:  # fmt: skip
    """The rows of runs/<run_id>.evals.csv (EVALS_COLUMNS) for `epoch` (of `steps` steps) of
    one model: its `inner` points, then the epoch's end from its `sums` (as epoch_row reads
    them), so that the last point is the epoch's CSV row to the bit. [] when
    evals_per_epoch is 1."""
    if config.evals_per_epoch == 1:
        return []
    end = sums[3:4] + sums[5:6]  # test correct and, for a BN variant, PreciseBN correct
    counted = zip(point_steps(steps, config.evals_per_epoch), [*inner, end], strict=True)
    return [
        dict(zip(EVALS_COLUMNS, [config.run_id, epoch, point, (epoch - 1) * steps + step, (epoch - 1) + step / steps,
                                 test_correct / n_test, precise[0] / n_test if precise else None]))
        for point, (step, (test_correct, *precise)) in enumerate(counted, start=1)
    ]  # fmt: skip


def step_hook(schedule: Callable[[int], None] | None, epoch: int, steps: int) -> Callable[[int], None] | None:
    """train_epoch's before_step for `epoch` (of `steps` steps): the schedule (norms.step_schedule,
    which takes the run's steps done) at the run's step; None without a schedule."""
    if schedule is None:
        return None
    return lambda step: schedule((epoch - 1) * steps + step - 1)


def frozen_epoch(config: RunConfig, epoch: int) -> bool:
    """Whether `epoch` (1-based) is one of the last frozen_bn_epochs."""
    return epoch > config.epochs - config.frozen_bn_epochs


def record(result: RunResult, row: dict, points: list[dict], on_epoch: Callable[[dict], None] | None) -> bool:
    """Append an epoch's `row` and `points` to `result` and pass the row to on_epoch; if its
    training loss is not finite, mark the run diverged. Returns whether the run goes on."""
    result.rows.append(row)
    result.points += points
    if on_epoch is not None:
        on_epoch(row)
    if not math.isfinite(row["train_loss"]):
        result.status = RunStatus.DIVERGED
    return result.status is not RunStatus.DIVERGED


def fit(
    config: RunConfig,
    data: FashionMNIST,
    on_epoch: Callable[[dict], None] | None = None,
    dtype: torch.dtype = torch.float32,
    result: RunResult | None = None,
) -> RunResult:
    """Train `config` on `data` (already on the run's device) for config.epochs epochs.

    Deterministic on the CPU for a given seed: the seed fixes the initialisation, the data
    order (a CPU generator, so also the same order on a GPU) and the PreciseBN subset.
    Calls on_epoch(row) after each epoch. Stops early, status "diverged", when an epoch's
    training loss is not finite. `dtype` float64 serves exactness tests. Fills and returns
    `result` (a new RunResult when None): a caller that passes its own keeps the finished
    epochs' rows and points should fit raise.
    """
    device = data.train_x.device
    data = with_dtype(data, dtype)
    model = build_model(config, device, dtype)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)
    order = torch.Generator().manual_seed(config.seed)
    n_train, n_test = len(data.train_x), len(data.test_x)
    subset = precise_bn_subset(config, n_train, device) if norms.running_stat_layers(model) else None
    steps = steps_per_epoch(n_train, config.batch_size)  # of `data`, which tests may cut unlike config's limits
    schedule = norms.step_schedule(model, steps)
    result = RunResult() if result is None else result
    for epoch in range(1, config.epochs + 1):
        sums, inner, train_seconds, eval_seconds = train_and_evaluate(
            model, optimizer, data, lambda: epoch_batches(n_train, config.batch_size, order, device),
            config.batch_size, subset, inner_steps=point_steps(steps, config.evals_per_epoch)[:-1],
            before_step=step_hook(schedule, epoch, steps), frozen=frozen_epoch(config, epoch),
        )  # fmt: skip
        row = epoch_row(config, epoch, sums, n_train, n_test, train_seconds, eval_seconds, n_train / train_seconds)
        if not record(result, row, epoch_points(config, epoch, steps, sums, inner, n_test), on_epoch):
            break
    return result
