"""Variants as data: an entry without measured costs or a known colour gets the fallbacks,
and a new block recipe builds, trains and fuses without code elsewhere."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bnstudy.sweep import costs
from bnstudy.engine import models
from bnstudy.engine import norms
from bnstudy.config import variants
from bnstudy.engine.fused import fit_group
from bnstudy.config.spec import RunConfig
from bnstudy.engine.train import fit


def test_a_variant_without_measured_costs_is_estimated_with_the_fallback(monkeypatch):
    config = RunConfig(variant="bn_after", lr=1e-3, batch_size=256, epochs=2, limit_train=10_000)
    unmeasured = dataclasses.replace(variants.variant("bn_after"), train_us=None, forward_us=None)
    as_fallback = dataclasses.replace(unmeasured, train_us=variants.FALLBACK_COSTS.train_us,
                                      forward_us=variants.FALLBACK_COSTS.forward_us)  # fmt: skip
    monkeypatch.setattr(costs, "variant", lambda name: unmeasured)
    estimate = costs.estimate_seconds(config)
    monkeypatch.setattr(costs, "variant", lambda name: as_fallback)
    assert estimate == costs.estimate_seconds(config) > 0


def test_every_name_gets_a_colour_known_or_not():
    colours = variants.palette(["none", "bn_after", "gone", "also_gone"])
    assert (colours["none"] == variants.variant("none").colour
            and colours["bn_after"] == variants.variant("bn_after").colour)  # fmt: skip
    assert colours["gone"] != colours["also_gone"] and set(colours.values()) <= {
        *(v.colour for v in variants.VARIANT_TABLE), *variants.FALLBACK_COLOURS}


def test_a_new_block_recipe_builds_trains_and_fuses_like_its_solo_runs(monkeypatch, small_data):
    """BatchNorm on both sides of the activation: one entry's recipe, no other code."""
    both = variants.Variant("bn_after", ("bn", "act", "bn"), "#000000", "BN before and after")
    monkeypatch.setattr(models, "variant_entry", lambda name: both)
    model = models.build_lenet("bn_after", activation="tanh")
    assert len(norms.running_stat_layers(model)) == 8
    configs = [RunConfig(variant="bn_after", activation="tanh", lr=lr, batch_size=64, epochs=1, seed=seed,
                         limit_train=256, limit_test=128, precise_bn_samples=64)
               for seed, lr in ((0, 1e-3), (1, 3e-3))]  # fmt: skip
    for config, fused in zip(configs, fit_group(configs, small_data, dtype=torch.float64)):
        solo = fit(config, small_data, dtype=torch.float64)
        assert fused.rows[0]["test_acc"] == solo.rows[0]["test_acc"]
        assert fused.rows[0]["train_loss"] == pytest.approx(solo.rows[0]["train_loss"], rel=1e-9)
