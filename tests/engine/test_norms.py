"""The normalization layers of bnstudy.engine.norms against torch's own layers and direct
reference computations, in float64: Batch Renormalization, Ghost BatchNorm, GroupNorm's
groups and LayerNorm; the registry's flags; each norm's fused layer against its solo ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnstudy.engine import norms
from bnstudy.config import variants
from bnstudy.engine.models import build_lenet
from bnstudy.engine.norms import BatchRenorm, GhostBatch, LayerSettings, ghost_sizes, renorm_limits

TIGHT = dict(rtol=1e-12, atol=1e-12)
SHAPES = [(2, (32, 7)), (4, (16, 5, 6, 6))]


def affine(layer: nn.Module, channels: int) -> nn.Module:
    """Non-trivial affine parameters (the same for any layer of `channels`)."""
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2.0, channels, dtype=torch.float64))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, channels, dtype=torch.float64))
    return layer


def torch_bn(num_dims: int, channels: int, momentum: float = 0.1) -> nn.Module:
    return affine((nn.BatchNorm2d if num_dims == 4 else nn.BatchNorm1d)(channels, momentum=momentum).double(), channels)


def forward_backward(layer: nn.Module, x: torch.Tensor):
    """(output, input gradient, weight gradient, bias gradient) of sum(y^2 * c) for a fixed c."""
    x = x.clone().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    weights = torch.linspace(-1.0, 2.0, y.numel(), dtype=y.dtype).view(y.shape)
    (y.square() * weights).sum().backward()
    inner = layer.layer if isinstance(layer, GhostBatch) else layer
    return y.detach(), x.grad, inner.weight.grad.clone(), inner.bias.grad.clone()


def batches(shape, count: int = 3):
    torch.manual_seed(0)
    return [torch.randn(shape, dtype=torch.float64) * (step + 1) + step for step in range(count)]


# ---------------------------------------------------------------- Batch Renormalization
@pytest.mark.parametrize("momentum", [0.1, 0.3])
@pytest.mark.parametrize("num_dims, shape", SHAPES)
def test_batch_renorm_with_r_max_1_and_d_max_0_is_batch_norm(num_dims, shape, momentum):
    channels = shape[1]
    ours = affine(BatchRenorm(channels, num_dims, momentum=momentum).double(), channels)
    theirs = torch_bn(num_dims, channels, momentum)
    assert (ours.r_max, ours.d_max) == (1.0, 0.0)
    for x in batches(shape):  # several updates, so the running statistics differ from the batch's
        for a, b in zip(forward_backward(ours, x), forward_backward(theirs, x)):
            torch.testing.assert_close(a, b, **TIGHT)
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, **TIGHT)
        torch.testing.assert_close(ours.running_var, theirs.running_var, **TIGHT)  # the unbiased variance, as torch
    assert ours.num_batches_tracked == theirs.num_batches_tracked == 3
    ours.eval(), theirs.eval()
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), **TIGHT)


def renorm_reference(x, weight, bias, running_mean, running_var, r_max, d_max, eps=1e-5):
    """The paper's Algorithm 1, r and d stopped from gradients, written out per channel."""
    dims = (0, *range(2, x.dim()))
    shape = (1, -1, *(1,) * (x.dim() - 2))
    mean, std = x.mean(dims), torch.sqrt(x.var(dims, unbiased=False) + eps)
    sigma = torch.sqrt(running_var + eps)
    r = torch.clamp(std.detach() / sigma, 1 / r_max, r_max)
    d = torch.clamp((mean.detach() - running_mean) / sigma, -d_max, d_max)
    x_hat = (x - mean.view(shape)) / std.view(shape) * r.view(shape) + d.view(shape)
    return weight.view(shape) * x_hat + bias.view(shape), r, d


@pytest.mark.parametrize("num_dims, shape", SHAPES)
def test_batch_renorm_follows_the_papers_algorithm_with_r_and_d_constant_in_backprop(num_dims, shape):
    channels = shape[1]
    layer = affine(BatchRenorm(channels, num_dims).double(), channels)
    with torch.no_grad():  # running statistics far from the batch's, so that r and d clip
        layer.running_mean.copy_(torch.linspace(-3, 3, channels, dtype=torch.float64))
        layer.running_var.copy_(torch.linspace(0.01, 30, channels, dtype=torch.float64))
    layer.r_max, layer.d_max = 2.0, 1.5
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
    weight, bias = (p.detach().clone().requires_grad_() for p in (layer.weight, layer.bias))
    x_ref = x.clone().requires_grad_()
    expected, r, d = renorm_reference(x_ref, weight, bias, layer.running_mean.clone(), layer.running_var.clone(),
                                      2.0, 1.5)  # fmt: skip
    assert (r == 2.0).any() and (r == 0.5).any() and (d.abs() == 1.5).any() and ((d.abs() < 1.5) & (d != 0)).any()
    running_mean, running_var = layer.running_mean.clone(), layer.running_var.clone()
    y, grad_x, grad_w, grad_b = forward_backward(layer, x)
    weights = torch.linspace(-1.0, 2.0, expected.numel(), dtype=x.dtype).view(expected.shape)
    (expected.square() * weights).sum().backward()
    torch.testing.assert_close(y, expected.detach(), **TIGHT)
    for got, want in ((grad_x, x_ref.grad), (grad_w, weight.grad), (grad_b, bias.grad)):
        torch.testing.assert_close(got, want, **TIGHT)
    dims = (0, *range(2, x.dim()))  # running statistics: BatchNorm's update, the unbiased variance
    torch.testing.assert_close(layer.running_mean, 0.9 * running_mean + 0.1 * x.mean(dims), **TIGHT)
    torch.testing.assert_close(layer.running_var, 0.9 * running_var + 0.1 * x.var(dims), **TIGHT)


def test_batch_renorm_in_eval_mode_normalises_with_the_running_statistics():
    layer = affine(BatchRenorm(3, 4).double(), 3)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
        layer.running_var.copy_(torch.tensor([4.0, 0.25, 1.0], dtype=torch.float64))
    layer.r_max, layer.d_max = 3.0, 5.0
    layer.eval()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    shape = (1, -1, 1, 1)
    expected = (x - layer.running_mean.view(shape)) / torch.sqrt(layer.running_var.view(shape) + 1e-5)
    expected = layer.weight.view(shape) * expected + layer.bias.view(shape)
    before = [b.clone() for b in layer.buffers()]
    torch.testing.assert_close(layer(x), expected, **TIGHT)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.buffers()))  # and leaves them alone


def test_the_renorm_schedule_warms_up_for_an_epoch_then_relaxes_over_two():
    steps = 10
    assert renorm_limits(0, steps) == renorm_limits(10, steps) == (1.0, 0.0)  # the first epoch, and the second's start
    assert renorm_limits(20, steps) == pytest.approx((2.0, 2.5))  # halfway through the ramp
    assert renorm_limits(30, steps) == renorm_limits(1000, steps) == (3.0, 5.0)
    r, d = zip(*(renorm_limits(t, steps) for t in range(40)))
    assert list(r) == sorted(r) and list(d) == sorted(d)


# ---------------------------------------------------------------- Ghost BatchNorm
@pytest.mark.parametrize("n, size, expected", [(128, 32, [32] * 4), (129, 32, [32, 32, 32, 33]),
                                               (100, 32, [32] * 3 + [4]), (20, 32, [20]), (33, 32, [33]),
                                               (64, 64, [64])])  # fmt: skip
def test_ghost_batches_split_a_batch_and_a_lone_rest_joins_the_last(n, size, expected):
    assert ghost_sizes(n, size) == expected and sum(expected) == n


@pytest.mark.parametrize("make", [lambda d, c: torch_bn(d, c, 0.2), lambda d, c: affine(BatchRenorm(c, d).double(), c)])
@pytest.mark.parametrize("num_dims, shape", [(2, (100, 7)), (4, (65, 5, 6, 6))])
def test_ghost_batch_norm_equals_a_direct_loop_over_its_sub_batches(num_dims, shape, make):
    """100 = 3 x 32 + 4 and 65 = 2 x 32 + 1 (the lone sample joins the second ghost batch)."""
    channels = shape[1]
    ghost, direct = GhostBatch(make(num_dims, channels), 32), make(num_dims, channels)
    for x in batches(shape, 2):
        got = forward_backward(ghost, x)
        x_direct = x.clone().requires_grad_()
        direct.zero_grad()
        parts, start = [], 0
        for size in ghost_sizes(len(x), 32):
            parts.append(direct(x_direct[start : start + size]))
            start += size
        y = torch.cat(parts)
        (y.square() * torch.linspace(-1.0, 2.0, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
        for a, b in zip(got, (y.detach(), x_direct.grad, direct.weight.grad, direct.bias.grad)):
            torch.testing.assert_close(a, b, **TIGHT)
        for a, b in zip(ghost.layer.buffers(), direct.buffers()):  # one update per ghost batch
            torch.testing.assert_close(a, b, **TIGHT)
    assert ghost.layer.num_batches_tracked == 2 * len(ghost_sizes(len(x), 32))
    ghost.eval(), direct.eval()
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(ghost(x), direct(x), **TIGHT)  # eval mode: the whole batch, running statistics


def test_precise_bn_averages_the_statistics_of_every_ghost_batch(small_data):
    """PreciseBN of a ghost-batch model: each layer's statistics are the plain mean over all
    ghost batches it saw, not an average of per-batch averages."""
    from bnstudy.engine.train import preserved_state, recompute_population_stats

    torch.manual_seed(0)
    model = build_lenet("bn_before", ghost_batch_size=32).double()
    first = model[1]
    assert isinstance(first, GhostBatch)
    inputs = []
    first.layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    x = small_data.train_x[:200].double()  # batches of 64, 64, 64, 8: ghost batches of 32 but the last
    with preserved_state(model):
        recompute_population_stats(model, x, 64)
        mean, var = first.layer.running_mean.clone(), first.layer.running_var.clone()
        assert first.averaged is None
    assert [len(i) for i in inputs] == [32] * 6 + [8]
    count = lambda t: t.numel() // t.shape[1]  # noqa: E731
    torch.testing.assert_close(mean, torch.stack([t.mean((0, 2, 3)) for t in inputs]).mean(0), **TIGHT)
    unbiased = [t.var((0, 2, 3), unbiased=False) * count(t) / (count(t) - 1) for t in inputs]
    torch.testing.assert_close(var, torch.stack(unbiased).mean(0), **TIGHT)
    assert first.layer.momentum == 0.1 and first.averaged is None  # put back


# ---------------------------------------------------------------- GroupNorm and LayerNorm
def test_group_norm_groups_for_lenets_channels():
    assert [norms.groups(c) for c in (6, 16, 120, 84)] == [2, 4, 4, 4]  # groups of 3, 4, 30 and 21 channels
    model = build_lenet("bn_before", norm="group")
    layers = [m for m in model if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in layers] == [(2, 6), (4, 16), (4, 120), (4, 84)]


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("num_dims, shape", SHAPES)
def test_group_and_layer_norm_are_torchs_and_the_same_in_train_and_eval_mode(norm, num_dims, shape):
    channels = shape[1]
    layer = affine(norms.solo_layer(channels, num_dims, LayerSettings(norm)).double(), channels)
    x = torch.randn(shape, dtype=torch.float64)
    groups = norms.groups(channels) if norm == "group" else 1
    if norm == "layer" and num_dims == 2:
        assert isinstance(layer, nn.LayerNorm)
        expected = nn.functional.layer_norm(x, (channels,), layer.weight, layer.bias)
    else:  # torch's GroupNorm; for LayerNorm of a convolution: all of a sample's (C, H, W), per-channel affine
        expected = nn.functional.group_norm(x, groups, layer.weight, layer.bias)
        if norm == "layer":
            shape4 = (1, -1, 1, 1)
            plain = nn.functional.layer_norm(x, x.shape[1:])
            torch.testing.assert_close(expected, plain * layer.weight.view(shape4) + layer.bias.view(shape4), **TIGHT)
    torch.testing.assert_close(layer.train()(x), expected, **TIGHT)
    torch.testing.assert_close(layer.eval()(x), expected, **TIGHT)


# ---------------------------------------------------------------- the registry
def test_the_registry_has_one_entry_per_declared_norm_and_its_flags():
    assert tuple(norms.REGISTRY) == tuple(variants.NORMS)
    for name, entry in norms.REGISTRY.items():
        assert entry.kind is variants.norm(name) and entry.keeps_running_stats == variants.norm(name).running_stats
    # no module class belongs to both a norm with running statistics and one without
    keeping = {c for e in norms.REGISTRY.values() if e.keeps_running_stats for c in e.classes}
    assert not keeping & {c for e in norms.REGISTRY.values() if not e.keeps_running_stats for c in e.classes}


@pytest.mark.parametrize("norm, count", [("batch", 4), ("batchrenorm", 4), ("group", 0), ("layer", 0)])
def test_bn_layers_are_the_layers_with_running_statistics(norm, count):
    for variant in ("bn_before", "bn_after"):
        model = build_lenet(variant, norm=norm, ghost_batch_size=32 if count else 0)
        assert len(norms.running_stat_layers(model)) == count
        assert sum(norms.is_norm_layer(m) for m in model) == 4
        assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("settings", [LayerSettings("batchrenorm", momentum=0.3), LayerSettings("group"),
                                      LayerSettings("layer"), LayerSettings("batch", ghost_batch_size=16),
                                      LayerSettings("batch", "scratch")])  # fmt: skip
@pytest.mark.parametrize("num_dims, channels", [(4, 6), (2, 84)])
def test_a_fused_norm_layer_is_its_members_solo_layers(settings, num_dims, channels):
    """G = 3 members' layers (different affine parameters and running statistics), stacked
    member-major, against each member's solo layer, in train and eval mode."""
    from bnstudy.engine.fused import GroupFeatureNorm, stacked_state

    G, B = 3, 40
    torch.manual_seed(0)
    solos = []
    for g in range(G):
        layer = norms.solo_layer(channels, num_dims, settings).double()
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randn_like(p))
            for name, b in layer.named_buffers():
                if name.endswith("running_var"):
                    b.copy_(torch.rand_like(b) + 0.5)
                elif name.endswith("running_mean"):
                    b.copy_(torch.randn_like(b))
        solos.append(layer)
    fused = norms.fused_layer(G, channels, num_dims, settings).double()
    fused.load_state_dict(stacked_state(solos))
    if num_dims == 2:
        fused = GroupFeatureNorm(fused)
    for module in [*solos, fused]:
        norms.set_renorm_limits(module, 2.0, 1.0)
    for mode in ("train", "eval"):
        for module in [*solos, fused]:
            module.train(mode == "train")
        if num_dims == 4:
            xs = [torch.randn(B, channels, 4, 4, dtype=torch.float64) for _ in range(G)]
            y = fused(torch.cat(xs, dim=1)).view(B, G, channels, 4, 4)
            outs = [y[:, g] for g in range(G)]
        else:
            xs = [torch.randn(B, channels, dtype=torch.float64) for _ in range(G)]
            y = fused(torch.stack(xs))  # (G, B, F), as past the fused network's Flatten
            outs = [y[g] for g in range(G)]
        for g in range(G):
            torch.testing.assert_close(outs[g], solos[g](xs[g]), **TIGHT)
    state = fused.state_dict()
    for name, value in stacked_state(solos).items():  # running statistics updated as each member's
        if value.dim():
            torch.testing.assert_close(state[name if num_dims == 4 else f"norm.{name}"], value, **TIGHT)


# ---------------------------------------------------------------- adding a norm
class ToyAffine(nn.Module):
    """A toy normalization layer: a per-channel affine map and nothing else (no statistics),
    over (N, C) or (N, C, H, W)."""

    def __init__(self, num_features: int, num_dims: int):
        super().__init__()
        self.shape = (1, num_features) + (1, 1) * (num_dims == 4)
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(self.shape) + self.bias.view(self.shape)


@pytest.fixture
def toy_norm(monkeypatch):
    """The toy layer registered as norm "toy": its declaration and its builders, one entry each."""
    monkeypatch.setitem(variants.NORM_TABLE, "toy",
                        variants.Norm("toy", "a per-channel affine map", False, False, "toy"))  # fmt: skip
    monkeypatch.setitem(norms.REGISTRY, "toy",
                        norms.NormLayer(variants.norm("toy"), lambda nf, nd, s: ToyAffine(nf, nd),
                                        lambda G, nf, nd, s: ToyAffine(G * nf, nd), (ToyAffine,)))  # fmt: skip


def test_a_norm_added_by_its_two_registry_entries_builds_solo_and_fused_and_its_runs_are_done(toy_norm, tmp_path,
                                                                                               capsys):
    """Adding a normalization layer is its registry entries plus its layer: the model builder,
    the fused engine (a group reproduces its members' solo runs in float64), the BN
    diagnostics (none: it keeps no statistics) and the run-file checks (done, not damaged)
    all take it from the registry."""
    from bnstudy.cli import main
    from bnstudy.engine.data import load_fashion_mnist
    from bnstudy.engine.fused import fit_group
    from bnstudy.config.settings import RunConfig
    from bnstudy.config.spec import load_study
    from bnstudy.results.store import RunStore
    from bnstudy.engine.train import fit
    from studies import tiny_spec

    model = build_lenet("bn_before", norm="toy")
    assert sum(isinstance(m, ToyAffine) for m in model.modules()) == 4 and norms.running_stat_layers(model) == []
    data = load_fashion_mnist(None, "cpu", 513, 256)
    group = [RunConfig(variant="bn_before", norm="toy", lr=lr, seed=seed, batch_size=128, epochs=2, limit_train=513,
                       limit_test=256, precise_bn_samples=128) for seed, lr in ((0, 1e-3), (1, 3e-3))]  # fmt: skip
    for fused, config in zip(fit_group(group, data, dtype=torch.float64), group):
        solo = fit(config, data, dtype=torch.float64)
        assert [r["test_acc"] for r in fused.rows] == [r["test_acc"] for r in solo.rows]
        assert [r["train_loss"] for r in fused.rows] == pytest.approx([r["train_loss"] for r in solo.rows], rel=1e-9)
        assert all(r["test_acc_precise_bn"] is None for r in fused.rows)

    spec, out = tmp_path / "toy.toml", tmp_path / "out"
    spec.write_text(tiny_spec("toy", 'variant = ["bn_before"]\nnorm = ["toy"]\n', epochs=1))
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 0
    (config,) = load_study(spec).runs()
    assert "-toy-" in config.run_id and RunStore(out).state(config).is_done()
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 0
    assert "nothing to run" in capsys.readouterr().out
