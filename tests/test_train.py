"""fit's per-epoch metrics against an independent recomputation; diagnostics leave the
model untouched; seeds, divergence and the empty diagnostic columns of `none`."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bnstudy.data import FashionMNIST
from bnstudy.models import bn_layers, build_lenet
from bnstudy.settings import CSV_COLUMNS
from bnstudy.spec import RunConfig
from bnstudy.train import (
    accuracy_with_batch_stats,
    accuracy_with_precise_bn,
    build_model,
    fit,
    make_optimizer,
    precise_bn_subset,
)

TIMING = ("train_seconds", "eval_seconds", "samples_per_second")


def config(**overrides) -> RunConfig:
    settings = dict(variant="bn_before", lr=1e-3, batch_size=100, epochs=2, seed=0, precise_bn_samples=300)
    return RunConfig(**{**settings, **overrides})


def chunks(n: int, size: int) -> list[slice]:
    """range(n) in slices of `size`, the last absorbing a lone leftover sample (train-mode
    BatchNorm cannot normalise a batch of one), written apart from bnstudy.data."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n])]


def replay(cfg: RunConfig, data):
    """Train `cfg` with a plain loop written independently of bnstudy.train, and compute
    every metric of the schema per epoch with plain PyTorch (torch BN only: PreciseBN
    here uses nn.BatchNorm's own cumulative average, momentum=None)."""
    torch.manual_seed(cfg.seed)
    model = build_lenet(cfg.variant, cfg.bn_impl)
    # fused, as bnstudy's: the default kernel differs by rounding, which a near-chance
    # model's test accuracy can turn into a few images (test_adam_is_torchs_default_adam...)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    order = torch.Generator().manual_seed(cfg.seed)
    n = len(data.train_x)
    subset = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7919))[: cfg.precise_bn_samples]
    epochs = []
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
            if bn_layers(model):
                probe = copy.deepcopy(model).train()
                hits = [(probe(data.test_x[part]).argmax(1) == data.test_y[part])
                        for part in chunks(len(data.test_x), cfg.batch_size)]  # fmt: skip
                row["test_acc_batch_stats"] = torch.cat(hits).float().mean().item()
                probe = copy.deepcopy(model).train()
                for layer in bn_layers(probe):
                    layer.reset_running_stats()
                    layer.momentum = None  # nn.BatchNorm: arithmetic mean over the batches
                for part in chunks(len(subset), cfg.batch_size):
                    probe(data.train_x[subset[part]])
                row["test_acc_precise_bn"] = (probe.eval()(data.test_x).argmax(1) == data.test_y).float().mean().item()
        epochs.append(row)
    return epochs


@pytest.mark.parametrize("variant", ["bn_before", "bn_after", "none"])
def test_every_metric_matches_an_independent_recomputation(variant, small_data):
    cfg = config(variant=variant)
    rows = fit(cfg, small_data).rows
    expected = replay(cfg, small_data)
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
    (want,) = replay(cfg, data)
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
    assert (row["run_id"], row["study"], row["variant"], row["lr"], row["batch_size"]) == (cfg.run_id, "s", "bn_before", 1e-3, 100)
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
    assert not torch.equal(precise_bn_subset(config(seed=0), 1024, "cpu"), precise_bn_subset(config(seed=1), 1024, "cpu"))
    rows_a, rows_b = (fit(config(seed=s, epochs=1), small_data).rows for s in (0, 1))
    assert rows_a[0]["train_loss"] != rows_b[0]["train_loss"]


@pytest.mark.parametrize("bn_impl", ["torch", "scratch"])
def test_diagnostics_leave_the_model_unchanged(bn_impl, small_data):
    model = build_model(config(bn_impl=bn_impl), "cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for start in range(0, 512, 128):  # some training, so the running statistics are not the defaults
        optimizer.zero_grad()
        F.cross_entropy(model(small_data.train_x[start : start + 128]), small_data.train_y[start : start + 128]).backward()
        optimizer.step()
    model.eval()
    before = copy.deepcopy(model.state_dict())
    momenta = [m.momentum for m in bn_layers(model)]
    accuracy_with_batch_stats(model, small_data, 64)
    accuracy_with_precise_bn(model, small_data, torch.arange(300), 64)
    assert not model.training
    assert [m.momentum for m in bn_layers(model)] == momenta
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


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
