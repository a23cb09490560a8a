"""LeNet-5 variants of the reference notebook, and BatchNorm written from scratch.

LeNet (input (N, 1, 28, 28)):
    Conv(1->6, 5) [norm/act] MaxPool(2) Conv(6->16, 5) [norm/act] MaxPool(2) Flatten
    Linear(256->120) [norm/act] Linear(120->84) [norm/act] Linear(84->10)  -> logits (N, 10)
where each [norm/act] block is, per variant:
    none: sigmoid    bn_before: BatchNorm -> sigmoid    bn_after: sigmoid -> BatchNorm
"""

from __future__ import annotations

import torch
from torch import nn

VARIANTS = ("none", "bn_before", "bn_after")
BN_IMPLS = ("torch", "scratch")
EPS, MOMENTUM = 1e-5, 0.1  # nn.BatchNorm defaults; the scratch version uses the same


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


def make_batch_norm(bn_impl: str, num_features: int, num_dims: int) -> nn.Module:
    """A BatchNorm layer of the chosen implementation ("torch" or "scratch")."""
    if bn_impl == "scratch":
        return BatchNorm(num_features, num_dims)
    if bn_impl == "torch":
        return nn.BatchNorm2d(num_features) if num_dims == 4 else nn.BatchNorm1d(num_features)
    raise ValueError(f"unknown bn_impl {bn_impl!r}; expected one of {BN_IMPLS}")


def norm_act(variant: str, bn_impl: str, num_features: int, num_dims: int) -> list[nn.Module]:
    """The [norm/act] block of a variant, as a list of layers."""
    if variant == "none":
        return [nn.Sigmoid()]
    if variant == "bn_before":
        return [make_batch_norm(bn_impl, num_features, num_dims), nn.Sigmoid()]
    if variant == "bn_after":
        return [nn.Sigmoid(), make_batch_norm(bn_impl, num_features, num_dims)]
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def build_lenet(variant: str, bn_impl: str = "torch") -> nn.Sequential:
    """The LeNet of a variant, initialised from torch's global RNG (seed it first)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), *norm_act(variant, bn_impl, 6, 4), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5), *norm_act(variant, bn_impl, 16, 4), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), *norm_act(variant, bn_impl, 120, 2),
        nn.Linear(120, 84), *norm_act(variant, bn_impl, 84, 2),
        nn.Linear(84, 10),
    )  # fmt: skip


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of `model`, either implementation, in forward order."""
    return [m for m in model.modules() if isinstance(m, (BatchNorm, nn.modules.batchnorm._BatchNorm))]
