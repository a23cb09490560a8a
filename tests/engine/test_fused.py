"""A fused group reproduces each member's solo train.fit run: every metric of every epoch
(float64: losses to ~1e-9, accuracies exactly), for every variant, bn_impl and optimizer;
a member does not depend on its partners; a diverging member is masked, not fatal."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from bnstudy.engine import fused
from bnstudy.engine.data import load_fashion_mnist
from bnstudy.engine.fused import (
    GroupOptimizer,
    fit_group,
    fuse_models,
    group_batches,
    group_data,
    max_group_size,
    member_cross_entropy,
    silence_member,
)
from bnstudy.engine import norms
from bnstudy.engine.norms import LayerSettings
from bnstudy.config.settings import CSV_COLUMNS
from bnstudy.config.spec import RunConfig
from bnstudy.engine.train import build_model, fit, train_epoch, with_dtype

# 513 = 4 x 128 + 1: the lone last sample joins the batch before it (data.epoch_batches)
LIMIT_TRAIN, LIMIT_TEST = 513, 256
TIMING = ("train_seconds", "eval_seconds", "samples_per_second")
ACCURACIES = ("train_acc", "test_acc", "test_acc_batch_stats", "test_acc_precise_bn")
LRS = {"adam": (1e-3, 3e-3, 1e-2), "sgd": (0.1, 0.3, 1.0)}  # one per member: they must differ


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread (after conftest's two at most): these runs are hundreds of tiny
    ops, and on a shared 2-core box a second thread spinning at every op multiplies the
    time (5 s against 14-30 s measured for one group and its solo runs)."""
    torch.set_num_threads(1)


def tiny_data(device: str = "cpu", limit_test: int = LIMIT_TEST):
    return _cached_tiny_data(device, limit_test)  # one cache entry per slice, defaults spelt out or not


@functools.cache
def _cached_tiny_data(device: str, limit_test: int):
    return load_fashion_mnist(None, device, LIMIT_TRAIN, limit_test)


def config(**overrides) -> RunConfig:
    settings = dict(variant="bn_before", lr=1e-3, batch_size=128, epochs=2, seed=0, limit_train=LIMIT_TRAIN,
                    limit_test=LIMIT_TEST, precise_bn_samples=128)  # fmt: skip
    return RunConfig(**{**settings, **overrides})


def members(**shape) -> list[RunConfig]:
    """Three runs of one shape: different seeds and learning rates."""
    lrs = LRS[shape.get("optimizer", "adam")]
    return [config(seed=seed, lr=lr, **shape) for seed, lr in zip((0, 1, 2), lrs)]


@functools.cache
def solo(cfg: RunConfig, dtype: torch.dtype = torch.float64, device: str = "cpu"):
    return fit(cfg, tiny_data(device, cfg.limit_test), dtype=dtype)


def assert_same_run(fused, expected, loss_rtol: float, acc_atol: float) -> None:
    """Same status, same epochs, same identity; losses within loss_rtol (relative),
    accuracies within acc_atol (0: exactly equal); non-finite values in the same places."""
    assert fused.status == expected.status
    assert len(fused.rows) == len(expected.rows)
    for got, want in zip(fused.rows, expected.rows):
        assert list(got) == CSV_COLUMNS
        for key in CSV_COLUMNS:
            a, b = got[key], want[key]
            if key in TIMING:
                continue
            if isinstance(b, float) and not math.isfinite(b):
                assert not math.isfinite(a), key
            elif key in ACCURACIES and b is not None:
                assert abs(a - b) <= acc_atol, (key, got["epoch"], a, b)
            elif isinstance(b, float) and key != "lr":
                assert a == pytest.approx(b, rel=loss_rtol, abs=1e-12), (key, got["epoch"])
            else:
                assert a == b, key


# Pairwise cover of variant x bn_impl x optimizer: every pair of values appears once.
CASES = [
    ("bn_before", "torch", "adam"), ("bn_before", "scratch", "sgd"),
    ("bn_after", "torch", "sgd"), ("bn_after", "scratch", "adam"),
    ("none", "torch", "adam"), ("none", "scratch", "sgd"),
]  # fmt: skip


@pytest.mark.parametrize("variant, bn_impl, optimizer", CASES)
def test_fused_group_reproduces_every_solo_run_in_float64(variant, bn_impl, optimizer):
    group = members(variant=variant, bn_impl=bn_impl, optimizer=optimizer)
    results = fit_group(group, tiny_data(), dtype=torch.float64)
    for cfg, result in zip(group, results):
        assert_same_run(result, solo(cfg), loss_rtol=1e-9, acc_atol=0)


# ReLU's dead units get gradients that are exactly 0 in one kernel and ~1e-20 in the other;
# Adam turns such a gradient into a full-size step (m / sqrt(v)), so the float64 losses part
# at ~1e-8 after two epochs (measured: 1.2e-8), while every accuracy stays exactly equal.
@pytest.mark.parametrize("shape, loss_rtol", [
    (dict(variant="bn_before", activation="relu"), 1e-7), (dict(variant="none", activation="tanh"), 1e-9),
    (dict(variant="bn_after", activation="tanh", bn_impl="scratch", bn_momentum=0.01), 1e-9),
    (dict(variant="bn_before", bn_momentum=0.3, optimizer="sgd"), 1e-9),
])  # fmt: skip
def test_fused_group_reproduces_solo_runs_for_every_activation_and_momentum(shape, loss_rtol):
    group = members(**shape)
    results = fit_group(group, tiny_data(), dtype=torch.float64)
    for cfg, result in zip(group, results):
        assert_same_run(result, solo(cfg), loss_rtol=loss_rtol, acc_atol=0)


# The remedies of issue 17: every norm, ghost batches, frozen statistics and average pooling.
# 513 images at batch 128: 4 steps an epoch, so Batch Renormalization's limits relax during
# epochs 2 and 3 (renorm_limits) and are full at the last; ghost batches of 32 split each
# batch in 4 (the last, 129 images, in 32, 32, 32, 33); 3 points an epoch where marked.
@pytest.mark.parametrize("shape", [
    dict(variant="bn_before", norm="group"),
    dict(variant="bn_after", norm="layer", optimizer="sgd", activation="tanh"),
    dict(variant="bn_before", norm="batchrenorm", epochs=4),
    dict(variant="bn_after", norm="batchrenorm", ghost_batch_size=32, bn_momentum=0.3, optimizer="sgd"),
    dict(variant="bn_before", ghost_batch_size=32, frozen_bn_epochs=1, evals_per_epoch=3),
    dict(variant="bn_before", bn_impl="scratch", frozen_bn_epochs=1, pool="avg"),
    dict(variant="none", pool="avg", optimizer="sgd"),
    dict(variant="bn_before", norm="layer", pool="avg", evals_per_epoch=3),
], ids=lambda shape: "-".join(f"{v}" for v in shape.values()))  # fmt: skip
def test_fused_group_reproduces_solo_runs_of_every_norm_and_remedy_in_float64(shape):
    group = members(**shape)
    results = fit_group(group, tiny_data(), dtype=torch.float64)
    for cfg, result in zip(group, results):
        expected = solo(cfg)
        assert_same_run(result, expected, loss_rtol=1e-9, acc_atol=0)
        assert result.points == expected.points
        assert (expected.rows[0]["test_acc_precise_bn"] is None) == (not cfg.keeps_running_stats)


@pytest.mark.parametrize("variant, bn_impl, optimizer", [("bn_before", "torch", "adam"), ("none", "scratch", "sgd")])
def test_fused_group_reproduces_every_solo_runs_points_in_float64(variant, bn_impl, optimizer):
    """513 = 4 x 128 + 1: 4 steps an epoch, so 3 points an epoch fall after its steps 1, 3
    (8/3 rounded) and 4, taken inside the grouped network's epoch for every member."""
    group = members(variant=variant, bn_impl=bn_impl, optimizer=optimizer, evals_per_epoch=3)
    results = fit_group(group, tiny_data(), dtype=torch.float64)
    for cfg, result in zip(group, results):
        expected = solo(cfg)
        assert [p["step"] for p in expected.points] == [1, 3, 4, 5, 7, 8]
        assert_same_run(result, expected, loss_rtol=1e-9, acc_atol=0)
        assert result.points == expected.points  # accuracies exactly: counts of the same predictions


def test_fused_group_matches_solo_runs_in_float32():
    group = members(variant="bn_before", bn_impl="torch", optimizer="adam")
    results = fit_group(group, tiny_data(), dtype=torch.float32)
    for cfg, result in zip(group, results):
        # Grouped and solo kernels round differently in float32 (~1e-7); training, Adam's
        # sign-like steps on near-zero gradients above all, grows that to ~1e-4 in the
        # losses (measured: at most 1e-4) and flips a few near-tie predictions (measured:
        # at most 4 of the 256 test images)
        assert_same_run(result, solo(cfg, torch.float32), loss_rtol=5e-4, acc_atol=6 / LIMIT_TEST)


def test_a_lone_last_sample_in_every_evaluation_pass_matches_solo_runs():
    """501 test images = 500 + 1 (the eval-mode pass) = 4 x 125 + 1 (the batch-statistics
    pass at batch 125), and 126 PreciseBN samples = 125 + 1, drawn as a (K, G) subset:
    every pass ends on a lone sample, which joins the batch before it, as in solo runs."""
    group = members(variant="bn_before", batch_size=125, limit_test=501, precise_bn_samples=126, epochs=1)
    results = fit_group(group, tiny_data(limit_test=501), dtype=torch.float64)
    for cfg, result in zip(group, results):
        assert_same_run(result, solo(cfg), loss_rtol=1e-9, acc_atol=0)


def test_a_member_does_not_depend_on_its_partners():
    a, b, c = members(variant="bn_after", optimizer="adam")
    other = config(variant="bn_after", seed=5, lr=0.05)
    alone_first = fit_group([a, b, c], tiny_data(), dtype=torch.float64)[0]
    last_of_two = fit_group([other, a], tiny_data(), dtype=torch.float64)[1]
    assert_same_run(last_of_two, alone_first, loss_rtol=1e-9, acc_atol=0)


def test_a_diverging_member_is_masked_and_the_others_match_their_solo_runs(monkeypatch):
    silenced = []

    def spy(model, optimizer, member):  # the real silence_member, keeping hold of what it masked
        silence_member(model, optimizer, member)
        silenced.append((model, optimizer, member))

    monkeypatch.setattr(fused, "silence_member", spy)
    shape = dict(variant="bn_after", optimizer="sgd", epochs=2)
    # float64 needs an absurd learning rate to overflow: 1e100 does in the first epoch
    group = [config(seed=0, lr=0.1, **shape), config(seed=1, lr=1e100, **shape), config(seed=2, lr=0.5, **shape)]
    results = fit_group(group, tiny_data(), dtype=torch.float64)
    assert [r.status for r in results] == ["complete", "diverged", "complete"]
    assert [len(r.rows) for r in results] == [2, 1, 2]  # the others trained on without it
    assert not math.isfinite(results[1].rows[-1]["train_loss"])
    for cfg, result in zip(group, results):
        assert_same_run(result, solo(cfg), loss_rtol=1e-9, acc_atol=0)
    # The group's throughput counts the members that trained: 3 in epoch 1 (the diverging one
    # trained it whole), 2 in epoch 2, when the masked member's images are no longer trained.
    for survivor in (results[0], results[2]):
        trained = [row["samples_per_second"] * row["train_seconds"] / LIMIT_TRAIN for row in survivor.rows]
        assert trained == [pytest.approx(3), pytest.approx(2)]
    ((model, optimizer, member),) = silenced
    assert member == 1 and optimizer.lrs[1] == 0
    for name, p in model.named_parameters():  # an epoch after the masking, its part is still zero
        assert not member_part(p, 1).any() and member_part(p, 0).any() and member_part(p, 2).any(), name


def member_part(t: torch.Tensor, member: int, group_size: int = 3) -> torch.Tensor:
    """Member `member`'s part of a member-major parameter, buffer or optimizer state."""
    return t.detach().reshape(group_size, -1)[member]


def group_trainer(configs: list[RunConfig]):
    """A fused model (float64), its GroupOptimizer and train(steps), which runs the next
    `steps` training steps of the members' first epoch."""
    data = group_data(with_dtype(tiny_data(), torch.float64), len(configs))
    model = fuse_models([build_model(c, "cpu", torch.float64) for c in configs], LayerSettings.of(configs[0]))
    optimizer = GroupOptimizer(configs[0].optimizer, model.parameters(), [c.lr for c in configs])
    orders = [torch.Generator().manual_seed(c.seed) for c in configs]
    batches = iter(group_batches(LIMIT_TRAIN, configs[0].batch_size, orders, "cpu"))

    def train(steps: int) -> None:
        train_epoch(model, optimizer, data, list(itertools.islice(batches, steps)), member_cross_entropy)

    return model, optimizer, train


def test_silence_member_masks_that_members_state_and_no_other():
    group = members(variant="bn_before", optimizer="adam")
    model, optimizer, train = group_trainer(group)
    train(2)  # parameters, Adam moments and BN running statistics all move away from their start
    before = {name: t.clone() for name, t in model.state_dict().items()}
    moments = [t.clone() for t in optimizer.exp_avgs + optimizer.exp_avg_sqs]
    silence_member(model, optimizer, 1)
    state = model.state_dict()
    for name, p in model.named_parameters():
        assert member_part(before[name], 1).any() and not member_part(p, 1).any(), name
    for bn in norms.running_stat_layers(model):
        assert torch.all(member_part(bn.running_mean, 1) == 0) and torch.all(member_part(bn.running_var, 1) == 1)
    assert optimizer.lrs.tolist() == [group[0].lr, 0.0, group[2].lr]
    for old, new in zip(moments, optimizer.exp_avgs + optimizer.exp_avg_sqs):
        assert member_part(old, 1).any() and not member_part(new, 1).any()
    for other in (0, 2):  # the others' state is untouched
        for name, value in state.items():
            if value.dim():  # BN's num_batches_tracked (0-d) is one counter for all members
                assert torch.equal(member_part(value, other), member_part(before[name], other)), (name, other)
        for old, new in zip(moments, optimizer.exp_avgs + optimizer.exp_avg_sqs):
            assert torch.equal(member_part(new, other), member_part(old, other))
    for bn in norms.running_stat_layers(model):  # ... and was not (0, 1) already: the reset above is member 1's alone
        assert member_part(bn.running_mean, 0).any() and not torch.all(member_part(bn.running_var, 0) == 1)
    train(1)  # the silenced member no longer learns; the others do
    for name, p in model.named_parameters():
        assert not member_part(p, 1).any(), name
        assert not torch.equal(member_part(p, 0), member_part(before[name], 0)), name


def test_rows_carry_the_groups_timing_and_reach_on_epoch():
    group = members(variant="none", epochs=1)
    seen = []
    results = fit_group(group, tiny_data(), on_epoch=seen.append)
    rows = [r.rows[0] for r in results]
    assert seen == rows and [r["run_id"] for r in rows] == [c.run_id for c in group]
    assert len({r["train_seconds"] for r in rows}) == 1  # one wall time: the group's
    assert rows[0]["samples_per_second"] == pytest.approx(3 * LIMIT_TRAIN / rows[0]["train_seconds"])


def test_fusion_key_ignores_seed_and_lr_and_fit_group_refuses_mixed_shapes():
    assert config(seed=0, lr=1e-3, study="a").fusion_key() == config(seed=3, lr=1e-1, study="b").fusion_key()
    for other in (dict(batch_size=64), dict(activation="relu"), dict(bn_momentum=0.01), dict(epochs=3),
                  dict(norm="group"), dict(ghost_batch_size=32), dict(frozen_bn_epochs=1), dict(pool="avg")):
        assert config().fusion_key() != config(**other).fusion_key(), other
    with pytest.raises(ValueError, match="fusion_key"):
        fit_group([config(), config(variant="none")], tiny_data())


def test_max_group_size_is_one_on_the_cpu():
    assert max_group_size("cpu", 256) == 1
    assert max_group_size("cpu", 16, torch.float64) == 1


# One float32 member at a batch of at most 500 images: evaluation's 500 images x 16,000
# activation floats x 4 bytes x a safety factor of 4 = 128 MB (fused.member_memory_bytes).
FLOAT32_MEMBER = 500 * 16_000 * 4 * 4


@pytest.mark.parametrize("batch_size, dtype, free, expected", [
    (256, torch.float32, 2 * 10 * FLOAT32_MEMBER, 10),  # half the free memory holds 10 members
    (256, torch.float32, 2 * 11 * FLOAT32_MEMBER - 1, 10),  # rounded down, never over
    (1000, torch.float64, 2 * 3 * (1000 * 16_000 * 8 * 4), 3),  # a batch over 500 sets the size; 8-byte floats
    (256, torch.float32, FLOAT32_MEMBER, 1),  # room for less than one: still one
    (256, torch.float32, 80 * 2**30, 64),  # an 80 GiB card would hold 335: capped
])  # fmt: skip
def test_max_group_size_on_a_gpu_follows_free_memory(monkeypatch, batch_size, dtype, free, expected):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30))
    assert max_group_size("cuda", batch_size, dtype) == expected


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [
    dict(bn_impl="torch"), dict(bn_impl="scratch"), dict(norm="batchrenorm", ghost_batch_size=32, epochs=4),
    dict(norm="group", pool="avg"), dict(norm="layer"), dict(frozen_bn_epochs=1, pool="avg", evals_per_epoch=3),
], ids=lambda shape: "-".join(f"{v}" for v in shape.values()))  # fmt: skip
def test_fused_group_reproduces_solo_runs_on_cuda_in_float64(shape):
    group = members(variant="bn_before", optimizer="adam", **shape)
    results = fit_group(group, tiny_data("cuda"), dtype=torch.float64)
    for cfg, result in zip(group, results):
        assert_same_run(result, solo(cfg, torch.float64, "cuda"), loss_rtol=1e-9, acc_atol=0)
    assert 1 <= max_group_size("cuda", 256) <= 64
