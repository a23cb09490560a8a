"""The normalization layers a variant's "bn" slot can hold, and their registry.

One registry entry per norm of variants.NORM_TABLE (batch, batchrenorm, group, layer) says
how to build the layer for one network (`solo(num_features, num_dims, settings)`), how to
build it for G networks fused into one (`fused(G, num_features, num_dims, settings)`, over
the member-major channels of bnstudy.engine.fused), which module classes are its layers, and
whether it keeps running statistics (`keeps_running_stats`: then the BN momentum, frozen
epochs, PreciseBN and the test-batch-statistics diagnostic apply). The model builder
(models.py), the fused engine (fused.py) and the BN diagnostics (train.py, through
`running_stat_layers`) all go through it.

Layers written here: the textbook's BatchNorm from scratch (bn_impl = "scratch"), Batch
Renormalization (Ioffe 2017) and the Ghost BatchNorm wrapper; GroupNorm and LayerNorm are
torch's own. docs/DESIGN.md ("Normalization layers") gives the choices: GroupNorm's
groups, the renormalization schedule, ghost batches and frozen statistics.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bnstudy.config.settings import BY_NAME
from bnstudy.config.variants import NORMS, Norm, norm

EPS, MOMENTUM = 1e-5, BY_NAME["bn_momentum"].default  # nn.BatchNorm's defaults; the scratch version uses the same


# ---------------------------------------------------------------- BatchNorm from scratch
def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum, training):
    """The textbook's batch normalisation, for X of shape (N, C) or (N, C, H, W).

    Training: normalise with this batch's mean and biased variance per channel (over N,
    or over N, H, W) and return moving statistics updated as
    `moving = (1 - momentum) * moving + momentum * batch`, where, as in PyTorch, the
    variance folded into `moving_var` is the *unbiased* one. Evaluation: normalise with
    the moving statistics and return them unchanged.

    gamma, beta, moving_mean, moving_var: shape (C,). Returns (Y like X, moving_mean,
    moving_var). Pure: the caller decides where the new moving statistics are stored.
    (The textbook picks the mode with `torch.is_grad_enabled()`; an explicit flag lets
    evaluation run without gradients in either mode.)
    """
    if X.dim() not in (2, 4):
        raise ValueError(f"batch_norm expects (N, C) or (N, C, H, W), got shape {tuple(X.shape)}")
    shape = (1, -1) if X.dim() == 2 else (1, -1, 1, 1)
    if training:
        dims = (0,) if X.dim() == 2 else (0, 2, 3)
        mean = X.mean(dim=dims)
        var = ((X - mean.reshape(shape)) ** 2).mean(dim=dims)
        count = X.numel() // X.shape[1]
        X_hat = (X - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
        with torch.no_grad():
            moving_mean = (1.0 - momentum) * moving_mean + momentum * mean.detach()
            unbiased = var.detach() * count / max(count - 1, 1)
            moving_var = (1.0 - momentum) * moving_var + momentum * unbiased
    else:
        X_hat = (X - moving_mean.reshape(shape)) / torch.sqrt(moving_var.reshape(shape) + eps)
    return gamma.reshape(shape) * X_hat + beta.reshape(shape), moving_mean, moving_var


class BatchNorm(nn.Module):
    """`batch_norm` as a module, with nn.BatchNorm's parameter and buffer names
    (weight, bias, running_mean, running_var) so the two are interchangeable,
    including their state_dicts. `num_dims` is 2 for (N, C) inputs, 4 for (N, C, H, W)."""

    def __init__(self, num_features: int, num_dims: int, eps: float = EPS, momentum: float = MOMENTUM):
        super().__init__()
        self.num_dims, self.eps, self.momentum = num_dims, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        Y, mean, var = batch_norm(
            X, self.weight, self.bias, self.running_mean, self.running_var, self.eps, self.momentum, self.training
        )
        if self.training:  # in place, so the buffers stay the ones the state_dict names
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        return Y


def make_batch_norm(bn_impl: str, num_features: int, num_dims: int, momentum: float = MOMENTUM) -> nn.Module:
    """A BatchNorm layer of the chosen implementation ("torch" or "scratch")."""
    if bn_impl == "scratch":
        return BatchNorm(num_features, num_dims, momentum=momentum)
    if bn_impl == "torch":
        kind = nn.BatchNorm2d if num_dims == 4 else nn.BatchNorm1d
        return kind(num_features, momentum=momentum)
    raise ValueError(f"unknown bn_impl {bn_impl!r}; expected torch or scratch")


# ---------------------------------------------------------------- Batch Renormalization
# The schedule (docs/DESIGN.md): r_max = 1, d_max = 0 (plain BatchNorm) for the first epoch,
# then both relaxed linearly over the next two, to r_max = 3 and d_max = 5 (the paper's final
# values) from the start of the fourth epoch on. Epochs of the run's own data, so that a
# run's first epochs do not depend on how many follow.
RENORM_WARMUP_EPOCHS, RENORM_RAMP_EPOCHS = 1, 2
RENORM_R_MAX, RENORM_D_MAX = 3.0, 5.0


def renorm_limits(steps_done: int, steps_per_epoch: int) -> tuple[float, float]:
    """(r_max, d_max) for the training step after `steps_done` steps of the run."""
    warmup, ramp = RENORM_WARMUP_EPOCHS * steps_per_epoch, RENORM_RAMP_EPOCHS * steps_per_epoch
    progress = min(max((steps_done - warmup) / ramp, 0.0), 1.0)
    return 1.0 + (RENORM_R_MAX - 1.0) * progress, RENORM_D_MAX * progress


class BatchRenorm(nn.Module):
    """Batch Renormalization (Ioffe 2017) of (N, C) (num_dims 2) or (N, C, H, W) inputs.

    Training: with the batch's mean mu_B and sigma_B = sqrt(biased variance + eps) per
    channel, and sigma = sqrt(running_var + eps),
        r = clip(sigma_B / sigma, 1/r_max, r_max),  d = clip((mu_B - running_mean) / sigma, -d_max, d_max)
    (both constants for backprop, as in the paper), y = weight * ((x - mu_B) / sigma_B * r + d) + bias.
    The running statistics are BatchNorm's: `running = (1 - m) * running + m * batch`, the
    unbiased variance, momentum m as bn_momentum. Eval mode normalises with them, as
    BatchNorm does. r_max = 1, d_max = 0 (the defaults) is BatchNorm; the training loop sets
    the limits each step (renorm_limits), and the diagnostics set (1, 0) (`batch_statistics`).
    Buffers and parameters have nn.BatchNorm's names.
    """

    def __init__(self, num_features: int, num_dims: int, eps: float = EPS, momentum: float = MOMENTUM):
        super().__init__()
        self.num_dims, self.eps, self.momentum = num_dims, eps, momentum
        self.r_max, self.d_max = 1.0, 0.0
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.num_dims:
            raise ValueError(f"BatchRenorm for {self.num_dims}-d inputs got shape {tuple(x.shape)}")
        if not self.training:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            False, 0.0, self.eps)  # fmt: skip
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=(0, *range(2, x.dim())), correction=0)
            running_std = torch.sqrt(self.running_var + self.eps)
            r = (torch.sqrt(var + self.eps) / running_std).clamp_(1.0 / self.r_max, self.r_max)
            d = ((mean - self.running_mean) / running_std).clamp_(-self.d_max, self.d_max)
            self.num_batches_tracked.add_(1)
        # With r and d constant, y = (weight * r) * x_hat + (bias + weight * d): BatchNorm's own
        # kernel with those affine parameters, which also updates the running statistics as
        # BatchNorm does (the unbiased variance) after r and d have read them.
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight * r,
                                        self.bias + self.weight * d, True, self.momentum, self.eps)  # fmt: skip


# ---------------------------------------------------------------- Ghost BatchNorm
def ghost_sizes(num_samples: int, size: int) -> list[int]:
    """The ghost batches of a batch of `num_samples`: as many of `size` as fit, then the
    rest; a rest of one sample joins the ghost batch before it (as a lone last sample
    joins the batch before it: data.split_batches)."""
    sizes = [size] * (num_samples // size)
    rest = num_samples - size * len(sizes)
    if rest == 1 and sizes:
        sizes[-1] += 1
    elif rest:
        sizes.append(rest)
    return sizes


class GhostBatch(nn.Module):
    """Ghost BatchNorm: `layer` (a norm with batch statistics) normalises each ghost batch
    of `size` samples of a training batch on its own (ghost_sizes), so its running
    statistics update once per ghost batch, in order. In eval mode (the layer's own: a
    frozen layer is in eval mode in training too) the batch passes whole.

    `averaged`: None, or (PreciseBN, train.recompute_population_stats) the count of ghost
    batches seen, each setting the layer's momentum to 1 / count first, so that its
    statistics become the plain average over every ghost batch.
    """

    def __init__(self, layer: nn.Module, size: int):
        super().__init__()
        self.layer, self.size = layer, size
        self.averaged: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.layer.training or len(x) <= self.size:
            return self._normalise(x)
        return torch.cat([self._normalise(part) for part in torch.split(x, ghost_sizes(len(x), self.size))])

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.averaged is not None and self.layer.training:
            self.averaged += 1
            self.layer.momentum = 1.0 / self.averaged
        return self.layer(x)


# ---------------------------------------------------------------- GroupNorm's groups
# The most groups, at most MAX_GROUPS, of at least MIN_GROUP_CHANNELS channels each:
# LeNet's 6, 16, 120 and 84 channels get 2 groups of 3, 4 of 4, 4 of 30 and 4 of 21.
MAX_GROUPS, MIN_GROUP_CHANNELS = 4, 3


def groups(num_features: int) -> int:
    """GroupNorm's number of groups for `num_features` channels (docs/DESIGN.md says why)."""
    return max(g for g in range(1, MAX_GROUPS + 1) if num_features % g == 0 and num_features // g >= MIN_GROUP_CHANNELS)


# ---------------------------------------------------------------- the registry
@dataclass(frozen=True)
class LayerSettings:
    """What a run's normalization layers are built from (its RunConfig's norm, bn_impl,
    bn_momentum and ghost_batch_size)."""

    norm: str = "batch"
    bn_impl: str = "torch"
    momentum: float = MOMENTUM
    ghost_batch_size: int = 0

    @classmethod
    def of(cls, config) -> LayerSettings:
        return cls(config.norm, config.bn_impl, config.bn_momentum, config.ghost_batch_size)


@dataclass(frozen=True)
class NormLayer:
    """One registry entry. solo(num_features, num_dims, settings): the layer of one network
    for a (N, C) (num_dims 2) or (N, C, H, W) (num_dims 4) activation. fused(G,
    num_features, num_dims, settings): the layer of G fused networks over (B, G*C, ...), each
    member's channels its own, whose state is the members' stacked (member-major).
    classes: the module types of its layers. kind: its torch-free declaration."""

    kind: Norm
    solo: Callable[[int, int, LayerSettings], nn.Module]
    fused: Callable[[int, int, int, LayerSettings], nn.Module]
    classes: tuple[type, ...]

    @property
    def keeps_running_stats(self) -> bool:
        return self.kind.running_stats


def _ghosted(layer: nn.Module, settings: LayerSettings) -> nn.Module:
    return GhostBatch(layer, settings.ghost_batch_size) if settings.ghost_batch_size else layer


def _batch(num_features: int, num_dims: int, s: LayerSettings) -> nn.Module:
    return _ghosted(make_batch_norm(s.bn_impl, num_features, num_dims, s.momentum), s)


def _renorm(num_features: int, num_dims: int, s: LayerSettings) -> nn.Module:
    return _ghosted(BatchRenorm(num_features, num_dims, momentum=s.momentum), s)


REGISTRY = {
    # per-channel layers: G members' C channels are one layer of G*C channels
    "batch": NormLayer(norm("batch"), _batch, lambda G, nf, nd, s: _batch(G * nf, nd, s),
                       (BatchNorm, nn.modules.batchnorm._BatchNorm)),
    "batchrenorm": NormLayer(norm("batchrenorm"), _renorm, lambda G, nf, nd, s: _renorm(G * nf, nd, s),
                             (BatchRenorm,)),
    # per-sample layers: each member's groups are groups of the G*C channels, never spanning two members
    "group": NormLayer(norm("group"), lambda nf, nd, s: nn.GroupNorm(groups(nf), nf),
                       lambda G, nf, nd, s: nn.GroupNorm(G * groups(nf), G * nf), (nn.GroupNorm,)),
    "layer": NormLayer(norm("layer"), lambda nf, nd, s: nn.GroupNorm(1, nf) if nd == 4 else nn.LayerNorm(nf),
                       lambda G, nf, nd, s: nn.GroupNorm(G, G * nf), (nn.GroupNorm, nn.LayerNorm)),
}  # fmt: skip
assert set(REGISTRY) == set(NORMS), "one registry entry per norm of variants.NORM_TABLE"


def layer_classes(running_stats_only: bool = False) -> tuple[type, ...]:
    """The module classes of the registry's layers (only those keeping running statistics):
    read from REGISTRY at each call, so that a norm registered later is one of them."""
    return tuple({c for e in REGISTRY.values() if e.keeps_running_stats or not running_stats_only for c in e.classes})

# Attributes of the layers that the diagnostics change and train.preserved_state puts back.
TUNABLE = ("momentum", "r_max", "d_max", "averaged")


def entry(name: str) -> NormLayer:
    return REGISTRY[name]


def solo_layer(num_features: int, num_dims: int, settings: LayerSettings) -> nn.Module:
    """The settings' norm layer for one network."""
    return REGISTRY[settings.norm].solo(num_features, num_dims, settings)


def fused_layer(group_size: int, num_features: int, num_dims: int, settings: LayerSettings) -> nn.Module:
    """The settings' norm layer for `group_size` fused networks of `num_features` channels each."""
    return REGISTRY[settings.norm].fused(group_size, num_features, num_dims, settings)


def is_norm_layer(module: nn.Module) -> bool:
    """A layer of the registry, or a GhostBatch around one (what the "bn" slot holds)."""
    return isinstance(module, (GhostBatch, *layer_classes()))


def num_features(module: nn.Module) -> int:
    """The channels of a norm layer (its affine weight's)."""
    return num_features(module.layer) if isinstance(module, GhostBatch) else module.weight.numel()


def running_stat_layers(model: nn.Module) -> list[nn.Module]:
    """Every layer of `model` that keeps running statistics, in forward order."""
    return [m for m in model.modules() if isinstance(m, layer_classes(running_stats_only=True))]


def tunable_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose TUNABLE attributes the diagnostics may change."""
    return [m for m in model.modules() if isinstance(m, (GhostBatch, *layer_classes(running_stats_only=True)))]


def freeze(model: nn.Module) -> None:
    """frozen_bn_epochs: the layers with running statistics normalise with them and stop
    updating them (eval mode) while the rest of `model` trains."""
    for m in running_stat_layers(model):
        m.eval()


def set_renorm_limits(model: nn.Module, r_max: float, d_max: float) -> None:
    for m in model.modules():
        if isinstance(m, BatchRenorm):
            m.r_max, m.d_max = r_max, d_max


def batch_statistics(model: nn.Module) -> None:
    """Make every layer normalise by its batch's statistics alone in train mode (Batch
    Renormalization's r_max = 1, d_max = 0), as the BN diagnostics assume. Mutates the
    layers: call it inside train.preserved_state."""
    set_renorm_limits(model, 1.0, 0.0)


def step_schedule(model: nn.Module, steps_per_epoch: int) -> Callable[[int], None] | None:
    """For a model with Batch Renormalization: set(steps_done) sets its limits for the next
    training step (renorm_limits); None for any other model."""
    if not any(isinstance(m, BatchRenorm) for m in model.modules()):
        return None
    return lambda steps_done: set_renorm_limits(model, *renorm_limits(steps_done, steps_per_epoch))


@contextlib.contextmanager
def averaging(model: nn.Module):
    """PreciseBN's averaging of ghost batches (GhostBatch.averaged) while inside."""
    ghosts = [m for m in model.modules() if isinstance(m, GhostBatch)]
    for m in ghosts:
        m.averaged = 0
    try:
        yield
    finally:
        for m in ghosts:
            m.averaged = None
