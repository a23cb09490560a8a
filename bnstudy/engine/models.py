"""LeNet-5 variants of the reference notebook, and the fast CPU max-pooling.

LeNet (input (N, 1, 28, 28)):
    Conv(1->6, 5) [norm/act] MaxPool(2) Conv(6->16, 5) [norm/act] MaxPool(2) Flatten
    Linear(256->120) [norm/act] Linear(120->84) [norm/act] Linear(84->10)  -> logits (N, 10)
where each [norm/act] block is its variant's recipe (bnstudy.config.variants), e.g.
    none: act    bn_before: BatchNorm -> act    bn_after: act -> BatchNorm
and act is the run's activation (sigmoid, the notebook's, relu or tanh); "BatchNorm" is the
run's norm layer (bnstudy.engine.norms: batch, batchrenorm, group or layer), and the pooling is
the run's `pool` (max, the notebook's, or avg).

Where a convolutional block ends in the activation (none, bn_before), a max-pooling
goes *before* it: max-pooling commutes with a non-decreasing function, so the network
computes the same function while the activation runs on a quarter of the values (about
a tenth of a CPU training step with the sigmoid; tests/engine/test_models.py checks outputs and
gradients against the notebook's order).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from bnstudy.engine import norms
# BatchNorm from scratch lives in bnstudy.engine.norms with the other normalization layers; re-exported here
from bnstudy.engine.norms import EPS, MOMENTUM, BatchNorm, LayerSettings, batch_norm, make_batch_norm  # noqa: F401
from bnstudy.config.variants import ACTIVATIONS
from bnstudy.config.variants import variant as variant_entry


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
    ties included (tests/engine/test_models.py). NaN inputs propagate to the values; their
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


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module: nn.Sigmoid, nn.ReLU or nn.Tanh (variants.ACTIVATIONS)."""
    return getattr(nn, ACTIVATIONS[name])()


@dataclass(frozen=True)
class Blocks:
    """What every [norm/act] block of one LeNet is made of: the variant's recipe, the
    activation, the normalization layers' settings (norms.LayerSettings) and the pooling."""

    variant: str
    activation: str
    layers: LayerSettings
    pool: str = "max"

    def norm_act(self, num_features: int, num_dims: int) -> list[nn.Module]:
        """The [norm/act] block for `num_features` channels of a (N, C) (num_dims 2) or
        (N, C, H, W) (num_dims 4) activation, as a list of layers."""
        make = {"bn": lambda: norms.solo_layer(num_features, num_dims, self.layers),
                "act": lambda: activation_layer(self.activation)}  # fmt: skip
        return [make[layer]() for layer in variant_entry(self.variant).block]

    def conv(self, in_channels: int, out_channels: int) -> list[nn.Module]:
        """Conv(in->out, 5), the [norm/act] block and the 2x2 pooling, as a list of layers;
        a max-pooling moves in front of a trailing activation (see the module docstring),
        an average pooling stays behind it (it does not commute with the activation)."""
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size=5), *self.norm_act(out_channels, 4)]
        if self.pool == "avg":
            return layers + [nn.AvgPool2d(2)]
        if self.pool != "max":
            raise ValueError(f"unknown pool {self.pool!r}; expected max or avg")
        if variant_entry(self.variant).block[-1] == "act":
            return layers[:-1] + [MaxPool2x2(), layers[-1]]
        return layers + [MaxPool2x2()]


def build_lenet(variant: str, bn_impl: str = "torch", activation: str = "sigmoid", momentum: float = MOMENTUM,
                norm: str = "batch", ghost_batch_size: int = 0, pool: str = "max") -> nn.Sequential:  # fmt: skip
    """The LeNet of a variant, initialised from torch's global RNG (seed it first)."""
    blocks = Blocks(variant, activation, LayerSettings(norm, bn_impl, momentum, ghost_batch_size), pool)
    return nn.Sequential(
        *blocks.conv(1, 6),
        *blocks.conv(6, 16),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), *blocks.norm_act(120, 2),
        nn.Linear(120, 84), *blocks.norm_act(84, 2),
        nn.Linear(84, 10),
    )  # fmt: skip
