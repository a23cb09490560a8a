"""fit's per-epoch metrics and finer points against an independent recomputation;
diagnostics and points leave the model untouched; seeds, divergence and the empty
diagnostic columns of `none`."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from bnstudy.engine import norms
from bnstudy.engine.data import FashionMNIST, epoch_batches
from bnstudy.engine.models import build_lenet
from bnstudy.config.settings import CSV_COLUMNS, EVALS_COLUMNS, steps_per_epoch
from bnstudy.config.spec import RunConfig
from bnstudy.engine.train import (
    accuracy_with_batch_stats,
    accuracy_with_precise_bn,
    build_model,
    fit,
    make_optimizer,
    point_counts,
    point_steps,
    precise_bn_subset,
)

TIMING = ("train_seconds", "eval_seconds", "samples_per_second")


def config(**overrides) -> RunConfig:
    settings = dict(variant="bn_before", lr=1e-3, batch_size=100, epochs=2, seed=0, precise_bn_samples=300)
    return RunConfig(**{**settings, **overrides})


def chunks(n: int, size: int) -> list[slice]:
    """range(n) in slices of `size`, the last absorbing a lone leftover sample (train-mode
    BatchNorm cannot normalise a batch of one), written apart from bnstudy.engine.data."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n])]


@torch.no_grad()
def eval_accuracy(model, data) -> float:
    """Test accuracy of a copy of `model` in eval mode, all test images in one batch."""
    probe = copy.deepcopy(model).eval()
    return (probe(data.test_x).argmax(1) == data.test_y).float().mean().item()


@torch.no_grad()
def precise_bn_accuracy(model, data, subset: torch.Tensor, batch_size: int) -> float:
    """Test accuracy of a copy of `model` whose BN statistics are nn.BatchNorm's own
    cumulative average (momentum=None) over data.train_x[subset] in batches."""
    probe = copy.deepcopy(model).train()
    for layer in norms.running_stat_layers(probe):
        layer.reset_running_stats()
        layer.momentum = None  # nn.BatchNorm: arithmetic mean over the batches
    for part in chunks(len(subset), batch_size):
        probe(data.train_x[subset[part]])
    return eval_accuracy(probe, data)


def replay(cfg: RunConfig, data, at_steps=()) -> tuple[list[dict], dict]:
    """Train `cfg` with a plain loop written independently of bnstudy.engine.train, and compute
    every metric of the schema per epoch with plain PyTorch (torch BN only: PreciseBN
    here uses nn.BatchNorm's own cumulative average, momentum=None). Returns (one dict
    per epoch, {step: (test_acc, test_acc_precise_bn or None)} after each optimizer step
    of the run, counted from 1, in `at_steps`), measured on copies of the model, so that
    the training goes on as if it had stopped there and been restarted untouched."""
    torch.manual_seed(cfg.seed)
    model = build_lenet(cfg.variant, cfg.bn_impl)
    # fused, as bnstudy's: the default kernel differs by rounding, which a near-chance
    # model's test accuracy can turn into a few images (test_adam_is_torchs_default_adam...)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    order = torch.Generator().manual_seed(cfg.seed)
    n = len(data.train_x)
    subset = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7919))[: cfg.precise_bn_samples]
    epochs, points, step = [], {}, 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=order)
        losses, hits = [], []
        model.train()
        for part in chunks(n, cfg.batch_size):
            idx = perm[part]
            logits = model(data.train_x[idx])
            loss = F.cross_entropy(logits, data.train_y[idx], reduction="none")  # per sample
            optimizer.zero_grad()
            loss.mean().backward()
            optimizer.step()
            losses += loss.tolist()
            hits += (logits.argmax(1) == data.train_y[idx]).tolist()
            step += 1
            if step in at_steps:
                precise = (precise_bn_accuracy(model, data, subset, cfg.batch_size)
                           if norms.running_stat_layers(model) else None)  # fmt: skip
                points[step] = (eval_accuracy(model, data), precise)
        assert len(losses) == n  # exactly this epoch's samples
        with torch.no_grad():
            model.eval()
            logits = model(data.test_x)
            row = {
                "train_loss": sum(losses) / n,
                "train_acc": sum(hits) / n,
                "test_loss": F.cross_entropy(logits, data.test_y).item(),
                "test_acc": (logits.argmax(1) == data.test_y).float().mean().item(),
            }
            if norms.running_stat_layers(model):
                probe = copy.deepcopy(model).train()
                hits = [(probe(data.test_x[part]).argmax(1) == data.test_y[part])
                        for part in chunks(len(data.test_x), cfg.batch_size)]  # fmt: skip
                row["test_acc_batch_stats"] = torch.cat(hits).float().mean().item()
                row["test_acc_precise_bn"] = precise_bn_accuracy(model, data, subset, cfg.batch_size)
        epochs.append(row)
    return epochs, points


@pytest.mark.parametrize("variant", ["bn_before", "bn_after", "none"])
def test_every_metric_matches_an_independent_recomputation(variant, small_data):
    cfg = config(variant=variant)
    rows = fit(cfg, small_data).rows
    expected, _ = replay(cfg, small_data)
    assert [r["epoch"] for r in rows] == [1, 2]
    for row, want in zip(rows, expected):
        for key, value in want.items():
            assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_a_lone_last_sample_in_every_evaluation_pass_is_counted_once(small_data):
    """501 test images = 500 + 1 (the eval-mode pass) = 4 x 125 + 1 (the batch-statistics
    pass at batch 125), and 376 PreciseBN samples = 3 x 125 + 1: every pass ends on a lone
    sample, which joins the batch before it. The metrics still match the replay's, which
    counts every test image exactly once."""
    data = FashionMNIST(small_data.train_x, small_data.train_y, small_data.test_x[:501], small_data.test_y[:501])
    cfg = config(variant="bn_after", batch_size=125, precise_bn_samples=376, epochs=1)
    (row,) = fit(cfg, data).rows
    (want,), _ = replay(cfg, data)
    for key, value in want.items():
        assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_adam_is_torchs_default_adam_to_rounding(small_data):
    """make_optimizer's fused Adam against torch.optim.Adam's default for-loop kernel, fed
    the same gradients (real images) for 20 steps: the same parameters to float32
    rounding. (Fed their own gradients, two such runs drift apart chaotically instead.)"""
    torch.manual_seed(0)
    model = build_lenet("bn_before")
    twin = copy.deepcopy(model)
    ours = make_optimizer("adam", model.parameters(), 1e-2)
    theirs = torch.optim.Adam(twin.parameters(), lr=1e-2)
    for start in range(0, 2000, 100):
        x, y = small_data.train_x[start : start + 100], small_data.train_y[start : start + 100]
        ours.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_rows_have_the_schema_columns_and_identity(small_data):
    cfg = config(epochs=1, study="s")
    (row,) = fit(cfg, small_data).rows
    assert list(row) == CSV_COLUMNS
    assert (row["run_id"], row["study"], row["variant"], row["lr"], row["batch_size"]) == (
        cfg.run_id, "s", "bn_before", 1e-3, 100)  # fmt: skip
    assert row["samples_per_second"] == pytest.approx(len(small_data.train_x) / row["train_seconds"])
    assert row["train_seconds"] > 0 and row["eval_seconds"] > 0


def test_none_leaves_the_diagnostic_columns_empty(small_data):
    (row,) = fit(config(variant="none", epochs=1), small_data).rows
    assert row["test_acc_batch_stats"] is None and row["test_acc_precise_bn"] is None


def test_same_seed_gives_the_same_metrics(small_data):
    first, again = (fit(config(bn_impl="scratch"), small_data).rows for _ in range(2))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(first) == strip(again)


def test_different_seeds_give_different_initialisation_order_and_metrics(small_data):
    a, b = build_model(config(seed=0), "cpu"), build_model(config(seed=1), "cpu")
    assert not torch.equal(a[0].weight, b[0].weight)
    assert not torch.equal(precise_bn_subset(config(seed=0), 1024, "cpu"),
                           precise_bn_subset(config(seed=1), 1024, "cpu"))  # fmt: skip
    rows_a, rows_b = (fit(config(seed=s, epochs=1), small_data).rows for s in (0, 1))
    assert rows_a[0]["train_loss"] != rows_b[0]["train_loss"]


def partly_trained(bn_impl: str, data):
    """A bn_before model after four Adam steps (train mode), so that its parameters and
    running statistics are not the defaults a reset would bring back."""
    model = build_model(config(bn_impl=bn_impl), "cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for start in range(0, 512, 128):
        optimizer.zero_grad()
        F.cross_entropy(model(data.train_x[start : start + 128]), data.train_y[start : start + 128]).backward()
        optimizer.step()
    return model


def assert_unchanged(model, measure) -> None:
    """measure() leaves `model`'s state_dict (parameters, running statistics, counters),
    BN momenta and train/eval mode exactly as they were."""
    before, momenta, mode = (copy.deepcopy(model.state_dict()), [m.momentum for m in norms.running_stat_layers(model)],
                             model.training)  # fmt: skip
    measure()
    assert model.training == mode
    assert [m.momentum for m in norms.running_stat_layers(model)] == momenta
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("bn_impl", ["torch", "scratch"])
def test_diagnostics_leave_the_model_unchanged(bn_impl, small_data):
    model = partly_trained(bn_impl, small_data).eval()
    assert_unchanged(model, lambda: accuracy_with_batch_stats(model, small_data, 64))
    assert_unchanged(model, lambda: accuracy_with_precise_bn(model, small_data, torch.arange(300), 64))


@pytest.mark.parametrize("bn_impl", ["torch", "scratch"])
def test_a_point_taken_mid_training_leaves_the_model_unchanged(bn_impl, small_data):
    """A point is taken between two training steps, in train mode: eval mode and PreciseBN
    (which resets the running statistics and sets momenta) must leave no trace."""
    model = partly_trained(bn_impl, small_data)
    assert model.training
    assert_unchanged(model, lambda: point_counts(model, small_data, torch.arange(300), 64))


def strip(rows: list[dict], also=()) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in (*TIMING, *also)} for r in rows]


@pytest.mark.parametrize("variant, bn_impl", [("bn_before", "torch"), ("bn_after", "scratch"), ("none", "torch")])
def test_points_do_not_change_the_training(variant, bn_impl, small_data):
    """float64, so that any difference shows: a run taking 4 points an epoch has the per-epoch
    rows of the same run without them (but its run_id and timing), to the bit."""
    base = config(variant=variant, bn_impl=bn_impl, lr=1e-2, batch_size=64)
    with_points = fit(dataclasses.replace(base, evals_per_epoch=4), small_data, dtype=torch.float64)
    without = fit(base, small_data, dtype=torch.float64)
    assert len(with_points.points) == 8 and without.points == []
    assert strip(with_points.rows, ["run_id"]) == strip(without.rows, ["run_id"])


@pytest.mark.parametrize("variant", ["bn_after", "none"])
def test_every_point_matches_an_independent_replay_stopped_at_its_step(variant, small_data):
    """1,024 images in batches of 64: 16 steps an epoch, so 4 points an epoch fall after
    its steps 4, 8, 12 and 16 (the run's 4, 8, ..., 32). The replay measures copies of its
    model there; each point's accuracies are its, and the epoch's last point is its row."""
    cfg = config(variant=variant, lr=1e-2, batch_size=64, evals_per_epoch=4)
    result = fit(cfg, small_data)
    _, expected = replay(cfg, small_data, at_steps=range(4, 33, 4))
    assert [p["step"] for p in result.points] == list(expected) == list(range(4, 33, 4))
    assert [p["epoch_fraction"] for p in result.points] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert all(list(p) == EVALS_COLUMNS and p["run_id"] == cfg.run_id for p in result.points)
    for point in result.points:
        test_acc, precise = expected[point["step"]]
        assert point["test_acc"] == pytest.approx(test_acc, rel=1e-5, abs=1e-6), point
        if precise is None:
            assert point["test_acc_precise_bn"] is None
        else:
            assert point["test_acc_precise_bn"] == pytest.approx(precise, rel=1e-5, abs=1e-6), point
    assert len({p["test_acc"] for p in result.points}) > 2  # the curve moves: the check has teeth
    for row, last in zip(result.rows, result.points[3::4]):
        assert (last["test_acc"], last["test_acc_precise_bn"]) == (row["test_acc"], row["test_acc_precise_bn"])


@pytest.mark.parametrize("n, batch_size", [(512, 64), (513, 64), (514, 64), (64, 64), (65, 64), (7, 1), (60_000, 256)])
def test_steps_per_epoch_counts_the_batches_an_epoch_draws(n, batch_size):
    assert steps_per_epoch(n, batch_size) == len(epoch_batches(n, batch_size, torch.Generator().manual_seed(0), "cpu"))


def test_point_steps_are_evenly_spaced_and_end_the_epoch():
    assert point_steps(8, 4) == [2, 4, 6, 8]
    assert point_steps(4, 3) == [1, 3, 4]  # 4/3, 8/3, 4 rounded
    assert point_steps(235, 4) == [59, 118, 176, 235]  # 60,000 images at batch 256; 117.5 rounds to even
    assert point_steps(5, 5) == [1, 2, 3, 4, 5] and point_steps(7, 1) == [7]
    with pytest.raises(ValueError):
        point_steps(4, 5)


def test_precise_bn_changes_the_statistics_it_evaluates_with(small_data):
    """The diagnostic is not a no-op: recomputed statistics differ from the running ones."""
    model = build_model(config(), "cpu").train()
    model(small_data.train_x[:256])  # one momentum step: running stats far from the population's
    model.eval()
    with torch.no_grad():
        running = (model(small_data.test_x).argmax(1) == small_data.test_y).sum().item()
    precise = accuracy_with_precise_bn(model, small_data, torch.arange(1024), 128).item()
    assert precise != running


def test_a_diverging_run_is_recorded_not_raised(small_data):
    result = fit(config(variant="bn_after", optimizer="sgd", lr=1e3, batch_size=64, epochs=3), small_data)
    assert result.status == "diverged"
    assert 1 <= len(result.rows) < 3
    assert not math.isfinite(result.rows[-1]["train_loss"])
    assert all(math.isfinite(r["train_loss"]) for r in result.rows[:-1])


def test_frozen_epochs_keep_the_running_statistics_and_train_as_in_eval_mode(small_data, monkeypatch):
    """frozen_bn_epochs = 2 of 3: in epochs 2 and 3 (and across a point taken mid-epoch) the
    running statistics stay as epoch 1 left them, and the model as it trains gives its
    eval-mode outputs; in epoch 1 they move. The BN diagnostics still run."""
    from bnstudy.engine import train

    cfg = config(epochs=3, frozen_bn_epochs=2, batch_size=128, evals_per_epoch=2)
    real_train_epoch, epochs = train.train_epoch, []
    probe = small_data.train_x[:64]

    def spy(model, optimizer, data, batches, criterion=F.cross_entropy, after_step=None, before_step=None,
            frozen=False):  # fmt: skip
        before = {name: b.clone() for name, b in model.named_buffers()}
        same_as_eval = []

        def after(step):
            if after_step is not None:
                after_step(step)  # the point, when this is its step
            with torch.no_grad(), train.preserved_state(model):  # a train-mode BN would update its statistics
                trained_mode = model(probe)
                same_as_eval.append(torch.equal(trained_mode, copy.deepcopy(model).eval()(probe)))

        sums = real_train_epoch(model, optimizer, data, batches, criterion, after, before_step, frozen)
        moved = [not torch.equal(b, before[name]) for name, b in model.named_buffers()]
        epochs.append((frozen, any(moved), all(same_as_eval), [m.training for m in norms.running_stat_layers(model)]))
        return sums

    monkeypatch.setattr(train, "train_epoch", spy)
    rows = fit(cfg, small_data).rows
    assert [frozen for frozen, *_ in epochs] == [False, True, True]
    assert [moved for _, moved, *_ in epochs] == [True, False, False]
    assert [same for *_, same, _ in epochs] == [False, True, True]
    assert [modes for *_, modes in epochs] == [[True] * 4, [False] * 4, [False] * 4]
    assert all(r["test_acc_batch_stats"] is not None and r["test_acc_precise_bn"] is not None for r in rows)


def test_batch_renorm_trains_as_batch_norm_through_its_warm_up_then_departs(small_data):
    """1,024 images at batch 128: 8 steps an epoch. Epoch 1 is the warm-up (r_max = 1,
    d_max = 0): BatchNorm's run to rounding; from epoch 2 the limits relax and r, d act."""
    base = config(batch_size=128, epochs=3, lr=1e-2)
    batch = fit(base, small_data, dtype=torch.float64).rows
    renorm = fit(dataclasses.replace(base, norm="batchrenorm"), small_data, dtype=torch.float64).rows
    for key in ("train_loss", "test_loss", "train_acc", "test_acc", "test_acc_batch_stats", "test_acc_precise_bn"):
        assert renorm[0][key] == pytest.approx(batch[0][key], rel=1e-9), key
    assert abs(renorm[2]["train_loss"] - batch[2]["train_loss"]) > 1e-6
