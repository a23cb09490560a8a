"""LeNet-5 variants of the reference notebook, and BatchNorm written from scratch.

LeNet (input (N, 1, 28, 28)):
    Conv(1->6, 5) [norm/act] MaxPool(2) Conv(6->16, 5) [norm/act] MaxPool(2) Flatten
    Linear(256->120) [norm/act] Linear(120->84) [norm/act] Linear(84->10)  -> logits (N, 10)
where each [norm/act] block is its variant's recipe (bnstudy.variants), e.g.
    none: act    bn_before: BatchNorm -> act    bn_after: act -> BatchNorm
and act is the run's activation (sigmoid, the notebook's, relu or tanh).

Where a convolutional block ends in the activation (none, bn_before), the module list
pools *before* it: max-pooling commutes with a non-decreasing function, so the network
computes the same function while the activation runs on a quarter of the values (about
a tenth of a CPU training step with the sigmoid; tests/test_models.py checks outputs and
gradients against the notebook's order).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from bnstudy.settings import BY_NAME
from bnstudy.variants import ACTIVATIONS
from bnstudy.variants import variant as variant_entry

EPS, MOMENTUM = 1e-5, BY_NAME["bn_momentum"].default  # nn.BatchNorm's defaults; the scratch version uses the same


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


@functools.lru_cache(maxsize=16)
def _window_origins(shape: tuple, device: torch.device) -> torch.Tensor:
    """Flat index h * W + w of each 2x2 window's top-left pixel for input `shape`
    (N, C, H, W), expanded to the output's shape (N, C, H/2, W/2), int64, contiguous:
    a broadcast add of int64 is 6x slower on the CPU than a contiguous one."""
    N, C, H, W = shape
    origins = torch.arange(0, H, 2, device=device).view(-1, 1) * W + torch.arange(0, W, 2, device=device)
    return origins.expand(N, C, H // 2, W // 2).contiguous()


def _window_corners(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Views (N, C, H/2, W/2) of x (N, C, H, W): the top-left, top-right, bottom-left and
    bottom-right pixel of every 2x2 window."""
    return x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]


class _MaxPool2x2Function(torch.autograd.Function):
    """2x2, stride-2 max pooling of (N, C, H, W), H and W even, from four strided views.

    Forward takes elementwise maxima of the windows' four corners (top-left, top-right,
    bottom-left, bottom-right), then builds max_pool2d's own int64 indices (the first
    maximum in row-major order wins, as in ATen), so backward is ATen's
    max_pool2d_with_indices_backward: values and gradients are those of F.max_pool2d,
    ties included (tests/test_models.py). NaN inputs propagate to the values; their
    indices may differ from ATen's (such a run is diverged anyway).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        top_left, top_right, bottom_left, bottom_right = _window_corners(x)
        top, bottom = torch.maximum(top_left, top_right), torch.maximum(bottom_left, bottom_right)
        out = torch.maximum(top, bottom)
        in_bottom = bottom > top  # strict: a tie goes to the top row, which ATen scans first
        right_top, right_bottom = top_right > top_left, bottom_right > bottom_left
        # the winner's column: right_top's answer, unless the bottom row wins
        in_right = right_top ^ (in_bottom & (right_top ^ right_bottom))
        # the winner's offset from its window's origin (0, 1, W or W + 1), built in uint8,
        # 3x faster than in int64 here (W + 1 <= 255: MaxPool2x2 sends wider images to ATen)
        offset = in_bottom.to(torch.uint8).mul_(x.shape[3]).add_(in_right)
        indices = offset.to(torch.int64).add_(_window_origins(tuple(x.shape), x.device))
        ctx.save_for_backward(x, indices)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        x, indices = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices
        )


class MaxPool2x2(nn.MaxPool2d):
    """nn.MaxPool2d(2) with a faster CPU path (the same values and gradients).

    On the CPU, ATen's NCHW max-pool kernel takes about 3.5 ms forward on LeNet's first
    (256, 6, 24, 24) activation, the largest single cost of a training step; four
    strided views and elementwise maxima take 0.4 ms without gradients and about 1.6 ms
    with the indices backward needs. Other devices, and odd-sized or non-4-D inputs,
    use nn.MaxPool2d's kernel.
    """

    def __init__(self):
        super().__init__(kernel_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or x.shape[2] % 2 or x.shape[3] % 2 or x.shape[3] > 254:
            return super().forward(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaxPool2x2Function.apply(x)
        top_left, top_right, bottom_left, bottom_right = _window_corners(x)
        return torch.maximum(torch.maximum(top_left, top_right), torch.maximum(bottom_left, bottom_right))


def make_batch_norm(bn_impl: str, num_features: int, num_dims: int, momentum: float = MOMENTUM) -> nn.Module:
    """A BatchNorm layer of the chosen implementation ("torch" or "scratch")."""
    if bn_impl == "scratch":
        return BatchNorm(num_features, num_dims, momentum=momentum)
    if bn_impl == "torch":
        kind = nn.BatchNorm2d if num_dims == 4 else nn.BatchNorm1d
        return kind(num_features, momentum=momentum)
    raise ValueError(f"unknown bn_impl {bn_impl!r}; expected torch or scratch")


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module: nn.Sigmoid, nn.ReLU or nn.Tanh (variants.ACTIVATIONS)."""
    return getattr(nn, ACTIVATIONS[name])()


@dataclass(frozen=True)
class Blocks:
    """What every [norm/act] block of one LeNet is made of: the variant's recipe, the
    activation, and the BatchNorm implementation and momentum."""

    variant: str
    activation: str
    bn_impl: str
    momentum: float

    def norm_act(self, num_features: int, num_dims: int) -> list[nn.Module]:
        """The [norm/act] block for `num_features` channels of a (N, C) (num_dims 2) or
        (N, C, H, W) (num_dims 4) activation, as a list of layers."""
        make = {"bn": lambda: make_batch_norm(self.bn_impl, num_features, num_dims, self.momentum),
                "act": lambda: activation_layer(self.activation)}  # fmt: skip
        return [make[layer]() for layer in variant_entry(self.variant).block]

    def conv(self, in_channels: int, out_channels: int) -> list[nn.Module]:
        """Conv(in->out, 5), the [norm/act] block and MaxPool(2), as a list of layers; the
        pooling moves in front of a trailing activation (see the module docstring)."""
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size=5), *self.norm_act(out_channels, 4)]
        if variant_entry(self.variant).block[-1] == "act":
            return layers[:-1] + [MaxPool2x2(), layers[-1]]
        return layers + [MaxPool2x2()]


def build_lenet(variant: str, bn_impl: str = "torch", activation: str = "sigmoid",
                momentum: float = MOMENTUM) -> nn.Sequential:  # fmt: skip
    """The LeNet of a variant, initialised from torch's global RNG (seed it first)."""
    blocks = Blocks(variant, activation, bn_impl, momentum)
    return nn.Sequential(
        *blocks.conv(1, 6),
        *blocks.conv(6, 16),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), *blocks.norm_act(120, 2),
        nn.Linear(120, 84), *blocks.norm_act(84, 2),
        nn.Linear(84, 10),
    )  # fmt: skip


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of `model`, either implementation, in forward order."""
    return [m for m in model.modules() if isinstance(m, (BatchNorm, nn.modules.batchnorm._BatchNorm))]
