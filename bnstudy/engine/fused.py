"""Train G runs of one shape as ONE grouped network (HFTA-style), for GPU throughput.

A LeNet step on Fashion-MNIST is a few dozen tiny kernels: on a GPU their launch overhead,
not arithmetic, sets the speed. G runs that share a fusion key (RunConfig.fusion_key: all
settings but seed and lr) are trained as one network whose every kernel does all G runs'
work: grouped convolutions, BatchNorm (or Batch Renormalization) over G·C channels
(per-member statistics for free), GroupNorm and LayerNorm as a GroupNorm of G times the
groups (norms.REGISTRY's fused builders), batched matmuls (torch.baddbmm) and one
optimizer step over stacked parameters with per-member learning rates. Each member keeps
its own seed, initialisation (its solo model's, copied), data order and PreciseBN subset,
and reproduces its solo `train.fit` run within float tolerance
(tests/engine/test_fused.py).

Layouts (G members, batch B):

    input      (B, G, 28, 28)    member g's own images in channel g
    conv part  (B, G·C, H, W)    member g owns channels g·C .. g·C+C-1
    linear     (G, B, F)         member-major, as torch.baddbmm wants
    logits     (B, 10, G)        so F.cross_entropy(logits, y (B, G), reduction="none") is (B, G)

Every parameter and BN buffer is member-major: `t.view(G, -1)[g]` is member g's part.
Members never interact: no layer mixes members, and the minimised loss is the sum of the
members' own mean losses, so each member's gradient is exactly its solo gradient.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bnstudy.engine import norms
from bnstudy.engine.data import FashionMNIST, epoch_batches
from bnstudy.engine.models import activation_layer
from bnstudy.engine.norms import LayerSettings
from bnstudy.config.settings import RunConfig, steps_per_epoch
from bnstudy.engine.train import (
    EVAL_BATCH_SIZE,
    RunResult,
    build_model,
    epoch_points,
    epoch_row,
    frozen_epoch,
    point_steps,
    precise_bn_subset,
    record,
    step_hook,
    train_and_evaluate,
    with_dtype,
)
from bnstudy.config.variants import ACTIVATIONS

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which solo runs use
# Floats one training image keeps alive per member in LeNet (bn_before, the largest):
# input 784, conv1/BN/sigmoid 3 x 3456, pool 864, conv2/BN/sigmoid 3 x 1024, pool 256,
# the linear blocks 3 x (120 + 84), logits 10: about 15.9k.
ACTIVATION_FLOATS_PER_SAMPLE = 16_000
# Backward doubles the live activations; cuDNN workspaces and allocator fragmentation
# take more. An estimate: bench/bench_fused.py reports it beside the measured peak.
MEMORY_SAFETY_FACTOR = 4
# Assumed: a few dozen LeNet members fill a GPU's compute, and larger groups would only
# delay every member's first results (bench/gpu_check.sh times G=9 against this cap).
MAX_GROUP_SIZE = 64
# On the CPU fusion does not pay (DESIGN.md, "Speed"): the runner runs solo processes.
CPU_GROUP_SIZE = 1
# Stateless layers that act per element or per channel: they work unchanged on G·C channels.
PER_CHANNEL_LAYERS = (nn.MaxPool2d, nn.AvgPool2d, *(type(activation_layer(name)) for name in ACTIVATIONS))


def member_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy per member: logits (B, 10, G), y (B, G) -> (G,) means or sums over B.
    The `criterion` that train.train_epoch and train.evaluate take for a fused group."""
    losses = F.cross_entropy(logits, y, reduction="none")  # (B, G)
    return losses.mean(dim=0) if reduction == "mean" else losses.sum(dim=0)


# ---------------------------------------------------------------- the grouped network
class GroupFlatten(nn.Module):
    """(B, G·C, H, W) -> (G, B, C·H·W), a view: each member's features in its solo
    model's Flatten order (C, H, W)."""

    def __init__(self, group_size: int):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.group_size, -1).transpose(0, 1)


class GroupLinear(nn.Module):
    """G linear layers in one batched matmul: (G, B, in) -> (G, B, out).
    weight (G, in, out) is each member's nn.Linear weight transposed; bias (G, 1, out)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class GroupFeatureNorm(nn.Module):
    """A norm layer over G·F features applied to (G, B, F), as (B, G·F): a BatchNorm
    normalises each (member, feature) over the member's B samples, as its solo
    BatchNorm1d does; a GroupNorm of G·groups groups each sample's groups within its
    member's features, as its solo GroupNorm or LayerNorm does. `norm` stays a submodule,
    so norms.running_stat_layers and train.preserved_state find it."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        G, B, F_ = x.shape
        y = self.norm(x.transpose(0, 1).reshape(B, G * F_))  # one copy: the layers want (N, C)
        return y.view(B, G, F_).transpose(0, 1)


class ClassMajorLogits(nn.Module):
    """(G, B, 10) -> (B, 10, G), a view: the layout F.cross_entropy reads as B samples
    with 10 classes at G positions, and argmax(dim=1) gives (B, G) predictions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(1, 2, 0)


def stacked_state(layers: list[nn.Module]) -> dict:
    """The members' state_dicts concatenated along dim 0 (member-major); 0-d entries
    (BatchNorm's num_batches_tracked) are taken from the first member."""
    states = [layer.state_dict() for layer in layers]
    return {k: torch.cat([s[k] for s in states]) if v.dim() else v for k, v in states[0].items()}


def fuse_layer(layers: list[nn.Module], settings: LayerSettings, flattened: bool) -> nn.Module:
    """The grouped counterpart of one layer of G solo LeNets (same position in each), with
    the members' parameters and buffers copied in; a norm layer is the registry's fused
    layer for `settings` (norms.fused_layer). `flattened`: past the Flatten, where
    activations are (G, B, F). TypeError for a layer it does not know."""
    first, G = layers[0], len(layers)
    if isinstance(first, PER_CHANNEL_LAYERS):
        return first  # stateless, so the same module serves any layout and G
    if isinstance(first, nn.Flatten):
        return GroupFlatten(G)
    if isinstance(first, nn.Linear):
        weights = torch.stack([layer.weight.detach().T for layer in layers])
        biases = torch.stack([layer.bias.detach() for layer in layers]).unsqueeze(1)
        return GroupLinear(weights, biases)
    if isinstance(first, nn.Conv2d):
        # skip_init: the weights are overwritten below, so torch's RNG is not consumed
        fused = nn.utils.skip_init(nn.Conv2d, G * first.in_channels, G * first.out_channels, first.kernel_size,
                                   first.stride, first.padding, first.dilation, groups=G, bias=first.bias is not None,
                                   device=first.weight.device, dtype=first.weight.dtype)  # fmt: skip
    elif norms.is_norm_layer(first):
        fused = norms.fused_layer(G, norms.num_features(first), 2 if flattened else 4, settings)
        fused = fused.to(next(first.parameters()))
    else:
        raise TypeError(f"cannot fuse a {type(first).__name__} layer")
    fused.load_state_dict(stacked_state(layers))
    return GroupFeatureNorm(fused) if flattened else fused


def fuse_models(models: list[nn.Sequential], settings: LayerSettings) -> nn.Sequential:
    """One grouped network from G solo LeNets of one variant and `settings` (their norm
    layers': norms.LayerSettings.of(config)), built by train.build_model, each member
    starting exactly where its solo model does. Input (B, G, 28, 28), output (B, 10, G);
    layouts in the module docstring."""
    fused, flattened = [], False
    for layers in zip(*models):
        fused.append(fuse_layer(list(layers), settings, flattened))
        flattened = flattened or isinstance(layers[0], nn.Flatten)
    return nn.Sequential(*fused, ClassMajorLogits())


# ---------------------------------------------------------------- the optimizer
class GroupOptimizer:
    """Plain SGD or Adam (torch.optim's formulas and defaults, eps=1e-8, bias
    correction) over stacked member-major parameters, each member at its own learning
    rate: numerically the update each member's solo torch.optim optimizer makes.

    The per-member learning rates are held as tensors shaped like each parameter, so
    every step is a handful of torch._foreach_* kernels for all parameters and members.
    `silence(g)` stops member g (learning rate 0, moments zeroed).
    """

    def __init__(self, name: str, params, lrs: list[float]):
        if name not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {name!r}")
        self.name, self.params = name, list(params)
        self.lrs = torch.tensor(lrs, dtype=torch.float64)
        self.steps = 0
        self.exp_avgs = [torch.zeros_like(p) for p in self.params] if name == "adam" else []
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params] if name == "adam" else []
        self._spread_lrs()

    def _spread_lrs(self) -> None:
        """self.neg_lrs[i]: minus each member's lr, broadcast over its part of params[i]."""
        G = len(self.lrs)
        self.neg_lrs = [
            (-self.lrs).to(device=p.device, dtype=p.dtype).repeat_interleave(p.numel() // G).view(p.shape)
            for p in self.params
        ]  # fmt: skip

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (train.train_epoch's call; always set to None)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every member from the gradients in p.grad."""
        grads = [p.grad for p in self.params]
        if self.name == "sgd":  # p - lr * g, as SGD's p.add_(g, alpha=-lr)
            torch._foreach_addcmul_(self.params, grads, self.neg_lrs)
            return
        beta1, beta2 = ADAM_BETAS
        self.steps += 1
        bias_correction1, bias_correction2 = 1 - beta1**self.steps, 1 - beta2**self.steps
        torch._foreach_lerp_(self.exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(self.exp_avg_sqs, beta2)
        torch._foreach_addcmul_(self.exp_avg_sqs, grads, grads, 1 - beta2)
        denom = torch._foreach_sqrt(self.exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2**0.5)
        torch._foreach_add_(denom, ADAM_EPS)
        ratio = torch._foreach_div(self.exp_avgs, denom)
        step_sizes = torch._foreach_div(self.neg_lrs, bias_correction1)  # -lr / bias_correction1
        torch._foreach_addcmul_(self.params, ratio, step_sizes)  # Adam's p.addcdiv_(m, denom, value=-step_size)

    def silence(self, member: int) -> None:
        """Member `member` stops learning: learning rate 0, Adam moments zeroed."""
        self.lrs[member] = 0.0
        self._spread_lrs()
        for state in self.exp_avgs + self.exp_avg_sqs:
            state.view(len(self.lrs), -1)[member].zero_()


@torch.no_grad()
def silence_member(model: nn.Module, optimizer: GroupOptimizer, member: int) -> None:
    """Mask a diverged member: zero its parameters, reset its BN running statistics and
    stop its updates, so its channels carry finite values from now on and cannot upset a
    kernel shared with the others. Mutates `model` and `optimizer`."""
    G = len(optimizer.lrs)
    for p in model.parameters():
        p.view(G, -1)[member].zero_()
    for bn in norms.running_stat_layers(model):
        bn.running_mean.view(G, -1)[member].zero_()
        bn.running_var.view(G, -1)[member].fill_(1.0)
    optimizer.silence(member)


# ---------------------------------------------------------------- data
def group_data(data: FashionMNIST, group_size: int) -> FashionMNIST:
    """The dataset as the grouped network indexes it (no copies, views only):
    train_x (N, 28, 28), so an index batch (B, G) gathers the input (B, G, 28, 28) and
    train_y[(B, G)] the targets (B, G); test_x (N_test, G, 28, 28) and test_y
    (N_test, G) expanded, since every member sees every test image."""
    return FashionMNIST(
        data.train_x[:, 0], data.train_y,
        data.test_x.expand(-1, group_size, -1, -1), data.test_y[:, None].expand(-1, group_size),
    )  # fmt: skip


def group_batches(num_samples: int, batch_size: int, generators: list[torch.Generator], device) -> list[torch.Tensor]:
    """One epoch's index batches (B, G): column g is the batch member g's solo run draws
    (data.epoch_batches from its own generator, so the same merge of a lone last sample).
    Advances every generator once."""
    per_member = [epoch_batches(num_samples, batch_size, generator, "cpu") for generator in generators]
    sizes = [len(batch) for batch in per_member[0]]
    orders = torch.stack([torch.cat(batches) for batches in per_member], dim=1).to(device)  # (N, G), one copy
    return list(torch.split(orders, sizes))


# ---------------------------------------------------------------- fitting a group
def fit_group(
    configs: list[RunConfig],
    data: FashionMNIST,
    on_epoch: Callable[[dict], None] | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[RunResult]:
    """Train runs sharing one fusion_key as one grouped network on data's device; return
    each run's RunResult, in order, with the rows and points train.fit would give it (same
    columns, metrics equal within float tolerance). Calls on_epoch(row) for every member's row.

    A member whose epoch training loss is not finite gets that row, status "diverged"
    and is masked (silence_member) while the others go on; training stops when none is
    left. Timing columns describe the whole group's epoch: train_seconds and
    eval_seconds are the group's wall times, and samples_per_second is the group's
    throughput, (active members x training samples) / train_seconds, i.e. the images
    per second the device trained while this run was one of them (for a solo run both
    definitions agree). Side effect: reseeds torch's global RNG (train.build_model).
    """
    keys = list(dict.fromkeys(c.fusion_key() for c in configs))
    if len(keys) != 1:
        raise ValueError(f"fit_group needs runs of one fusion_key, got {len(keys)}: {keys}")
    first, G, device = configs[0], len(configs), data.train_x.device
    data = with_dtype(data, dtype)
    model = fuse_models([build_model(c, device, dtype) for c in configs], LayerSettings.of(first))
    optimizer = GroupOptimizer(first.optimizer, model.parameters(), [c.lr for c in configs])
    orders = [torch.Generator().manual_seed(c.seed) for c in configs]
    n_train, n_test = len(data.train_x), len(data.test_x)
    subset = (torch.stack([precise_bn_subset(c, n_train, device) for c in configs], dim=1)  # (K, G)
              if norms.running_stat_layers(model) else None)  # fmt: skip
    grouped = group_data(data, G)
    steps = steps_per_epoch(n_train, first.batch_size)
    schedule = norms.step_schedule(model, steps)  # the members share every setting it reads
    results, active = [RunResult() for _ in configs], list(range(G))
    for epoch in range(1, first.epochs + 1):
        sums, inner, train_seconds, eval_seconds = train_and_evaluate(
            model, optimizer, grouped, lambda: group_batches(n_train, first.batch_size, orders, device),
            first.batch_size, subset, member_cross_entropy, point_steps(steps, first.evals_per_epoch)[:-1],
            step_hook(schedule, epoch, steps), frozen_epoch(first, epoch),
        )  # fmt: skip
        throughput = len(active) * n_train / train_seconds
        for g in list(active):
            member_sums, member_inner = [s[g] for s in sums], [[c[g] for c in point] for point in inner]
            row = epoch_row(configs[g], epoch, member_sums, n_train, n_test, train_seconds, eval_seconds, throughput)
            points = epoch_points(configs[g], epoch, steps, member_sums, member_inner, n_test)
            if not record(results[g], row, points, on_epoch):
                active.remove(g)
                silence_member(model, optimizer, g)
        if not active:
            break
    return results


def member_memory_bytes(batch_size: int, dtype: torch.dtype = torch.float32) -> int:
    """Estimated device memory one member of a group needs: MEMORY_SAFETY_FACTOR x the
    activations of max(batch_size, EVAL_BATCH_SIZE) images (evaluation batches are larger
    than most training batches, though without gradients)."""
    element_size = torch.empty((), dtype=dtype).element_size()
    return max(batch_size, EVAL_BATCH_SIZE) * ACTIVATION_FLOATS_PER_SAMPLE * element_size * MEMORY_SAFETY_FACTOR


def max_group_size(device: torch.device | str, batch_size: int, dtype: torch.dtype = torch.float32) -> int:
    """How many runs of `batch_size` to fuse on `device`: CPU_GROUP_SIZE on the CPU; on a
    GPU, as many members (member_memory_bytes) as half its free memory holds, between 1
    and MAX_GROUP_SIZE. Reads the free memory now: call it where the group will run."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_GROUP_SIZE
    free, _total = torch.cuda.mem_get_info(device)
    return max(1, min(MAX_GROUP_SIZE, (free // 2) // member_memory_bytes(batch_size, dtype)))
