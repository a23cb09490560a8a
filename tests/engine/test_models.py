"""The from-scratch BatchNorm matches nn.BatchNorm1d/2d, and the LeNet variants have the
notebook's shape."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnstudy.engine import norms
from bnstudy.engine.models import BatchNorm, MaxPool2x2, build_lenet

TIGHT = dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, 0.03, 1.0])
@pytest.mark.parametrize("num_dims, shape", [(2, (32, 7)), (4, (16, 5, 6, 6))])
def test_scratch_batch_norm_matches_torch_in_train_and_eval_mode(num_dims, shape, momentum):
    torch.manual_seed(0)
    channels = shape[1]
    ours = BatchNorm(channels, num_dims, momentum=momentum).double()
    theirs = (nn.BatchNorm2d if num_dims == 4 else nn.BatchNorm1d)(channels, momentum=momentum).double()
    with torch.no_grad():  # non-trivial affine parameters, the same in both
        for layer in (ours, theirs):
            layer.weight.copy_(torch.linspace(0.5, 2.0, channels, dtype=torch.float64))
            layer.bias.copy_(torch.linspace(-1.0, 1.0, channels, dtype=torch.float64))
    for step in range(3):  # several updates of the running statistics
        x = torch.randn(shape, dtype=torch.float64) * (step + 1) + step
        x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
        torch.testing.assert_close(y_ours, y_theirs, **TIGHT)
        y_ours.square().sum().backward()
        y_theirs.square().sum().backward()
        torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TIGHT)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **TIGHT)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, **TIGHT)
        # PyTorch folds the *unbiased* batch variance into running_var.
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, **TIGHT)
        torch.testing.assert_close(ours.running_var, theirs.running_var, **TIGHT)
    ours.eval()
    theirs.eval()
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), **TIGHT)


def test_scratch_and_torch_state_dicts_are_interchangeable():
    torch.manual_seed(0)
    ours, theirs = build_lenet("bn_before", "scratch"), build_lenet("bn_before", "torch")
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert missing == [] and all(k.endswith("num_batches_tracked") for k in unexpected)


# ReLU's unbounded activations grow the float64 rounding of the two implementations
# (1e-16) faster: with SGD at 0.5 to 2e-10 in four steps (measured), at 0.05 to 4e-13.
@pytest.mark.parametrize("variant, activation, momentum, lr", [
    ("bn_before", "sigmoid", 0.1, 0.5), ("bn_after", "relu", 0.3, 0.05), ("bn_before", "tanh", 0.01, 0.5),
])  # fmt: skip
def test_scratch_and_torch_lenets_train_identically(variant, activation, momentum, lr, small_data):
    """Same seed, same data: the two implementations give the same network after training,
    whatever the activation and BN momentum."""
    models = []
    for impl in ("torch", "scratch"):
        torch.manual_seed(3)
        models.append(build_lenet(variant, impl, activation, momentum).double())
    assert {m.momentum for model in models for m in norms.running_stat_layers(model)} == {momentum}
    x, y = small_data.train_x[:256].double(), small_data.train_y[:256]
    optimizers = [torch.optim.SGD(m.parameters(), lr=lr) for m in models]
    for batch in torch.split(torch.arange(256), 64):
        for model, opt in zip(models, optimizers):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    theirs, ours = models
    ours_state = ours.state_dict()
    for name, value in theirs.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            torch.testing.assert_close(ours_state[name], value, rtol=1e-10, atol=1e-10, msg=name)
    for model in models:
        model.eval()
    torch.testing.assert_close(theirs(x), ours(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant, first_block", [
    ("none", [nn.Conv2d, MaxPool2x2, nn.Sigmoid]),  # pooling before the sigmoid: see below
    ("bn_before", [nn.Conv2d, nn.BatchNorm2d, MaxPool2x2, nn.Sigmoid]),
    ("bn_after", [nn.Conv2d, nn.Sigmoid, nn.BatchNorm2d, MaxPool2x2]),
])  # fmt: skip
def test_variants_place_batch_norm_around_the_sigmoid(variant, first_block):
    model = build_lenet(variant)
    assert [type(m) for m in model[: len(first_block)]] == first_block
    assert len(norms.running_stat_layers(model)) == (0 if variant == "none" else 4)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # the activation setting swaps every sigmoid, and only the sigmoids, for its own kind
    for activation, kind in (("relu", nn.ReLU), ("tanh", nn.Tanh)):
        swapped = [kind if t is nn.Sigmoid else t for t in map(type, model)]
        assert [type(m) for m in build_lenet(variant, activation=activation)] == swapped


def test_lenet_has_the_notebook_layer_sizes():
    model = build_lenet("bn_before", "scratch")
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 6, (5, 5)), (6, 16, (5, 5))]
    assert [(l.in_features, l.out_features) for l in linears] == [(256, 120), (120, 84), (84, 10)]
    assert [m.weight.numel() for m in norms.running_stat_layers(model)] == [6, 16, 120, 84]
    copy.deepcopy(model)  # scratch layers must copy like any module (fused groups rely on it)


def pool_values_and_gradients(pool, x: torch.Tensor, grad_out: torch.Tensor):
    x = x.clone().requires_grad_()
    y = pool(x)
    (grad_x,) = torch.autograd.grad(y, x, grad_out)
    return y, grad_x


@pytest.mark.parametrize("shape", [(5, 6, 24, 24), (3, 16, 8, 8), (2, 1, 4, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_max_pool_gives_max_pool2d_values_and_gradients(shape, dtype):
    """Random inputs, and small integers, whose many ties must go where ATen sends them."""
    torch.manual_seed(0)
    out_shape = (*shape[:2], shape[2] // 2, shape[3] // 2)
    grad_out = torch.randn(out_shape, dtype=dtype)
    for x in (torch.randn(shape, dtype=dtype), torch.randint(0, 3, shape).to(dtype)):
        ours = pool_values_and_gradients(MaxPool2x2(), x, grad_out)
        theirs = pool_values_and_gradients(nn.MaxPool2d(2), x, grad_out)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
        with torch.no_grad():
            assert torch.equal(MaxPool2x2()(x), theirs[0])


def test_fast_max_pool_falls_back_on_odd_sizes():
    x = torch.randn(2, 3, 5, 7)
    assert torch.equal(MaxPool2x2()(x), nn.MaxPool2d(2)(x))


ACTIVATION_TYPES = (nn.Sigmoid, nn.ReLU, nn.Tanh)


def notebook_order(model: nn.Sequential) -> nn.Sequential:
    """The same modules (shared parameters) with every pooling moved back behind the
    activation it precedes: the layer order of the notebook."""
    layers = list(model)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], MaxPool2x2) and isinstance(layers[i + 1], ACTIVATION_TYPES):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
@pytest.mark.parametrize("variant", ["none", "bn_before"])
def test_pooling_before_the_activation_computes_the_notebooks_function(variant, activation, small_data):
    """Same logits, same parameter gradients, same BN running statistics as the
    notebook's order (activation, then pooling), on real images in train and eval mode:
    max-pooling commutes with every non-decreasing activation, ReLU's flat half included."""
    torch.manual_seed(0)
    ours = build_lenet(variant, activation=activation).double()
    theirs = notebook_order(copy.deepcopy(ours))
    act = type(ours[-2])  # the last [norm/act] block, before the output layer, ends in the activation here
    assert act in ACTIVATION_TYPES
    assert [type(m) for m in theirs[:3]] in ([nn.Conv2d, act, MaxPool2x2], [nn.Conv2d, nn.BatchNorm2d, act])
    x, y = small_data.train_x[:128].double(), small_data.train_y[:128]
    for model in (ours, theirs):
        nn.functional.cross_entropy(model(x), y).backward()
    for (name, p_ours), p_theirs in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p_ours.grad, p_theirs.grad, **TIGHT, msg=name)
    for b_ours, b_theirs in zip(ours.buffers(), theirs.buffers()):
        torch.testing.assert_close(b_ours, b_theirs, **TIGHT)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), **TIGHT)


@pytest.mark.parametrize("variant, first_block", [
    ("none", [nn.Conv2d, nn.Sigmoid, nn.AvgPool2d]),
    ("bn_before", [nn.Conv2d, nn.BatchNorm2d, nn.Sigmoid, nn.AvgPool2d]),
    ("bn_after", [nn.Conv2d, nn.Sigmoid, nn.BatchNorm2d, nn.AvgPool2d]),
])  # fmt: skip
def test_average_pooling_stays_behind_the_activation_in_the_notebooks_order(variant, first_block):
    """The pooling trick is exact for max only: avg pooling of sigmoids is not the sigmoid of
    avg pooling, so `pool = avg` keeps the notebook's order (and ATen's kernel)."""
    model = build_lenet(variant, pool="avg")
    assert [type(m) for m in model[: len(first_block)]] == first_block
    assert sum(isinstance(m, nn.AvgPool2d) for m in model) == 2 and not any(isinstance(m, MaxPool2x2) for m in model)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    swapped = nn.functional.avg_pool2d(torch.sigmoid(x), 2) - torch.sigmoid(nn.functional.avg_pool2d(x, 2))
    assert swapped.abs().max() > 1e-3  # the order matters for avg
