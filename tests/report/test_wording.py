"""bnstudy.report.wording: how settings, cells and numbers read in labels and sentences."""

from __future__ import annotations

import math

import pandas as pd

from bnstudy.report.wording import (
    cell_text,
    extra_axes,
    join_words,
    pct,
    per_variant,
    plural,
    pp,
    setting_text,
    value_text,
)


def test_settings_read_as_words():
    assert value_text("lr", 0.001) == "0.001" and value_text("limit_train", None) == "all"
    assert value_text("limit_train", math.nan) == "all" and value_text("batch_size", 256) == "256"
    assert setting_text("lr", 1e-2) == "learning rate 0.01" and setting_text("seed", 3) == "seed 3"


def test_a_cell_names_the_settings_that_vary_beyond_the_plotted_axes():
    cells = pd.DataFrame({"variant": ["none", "none"], "norm": ["batch", "batch"], "pool": ["max", "max"],
                          "ghost_batch_size": [0, 0], "frozen_bn_epochs": [0, 0],
                          "activation": ["relu", "relu"], "bn_impl": ["torch", "torch"],
                          "bn_momentum": [0.1, 0.01], "optimizer": ["adam", "sgd"],
                          "lr": [1e-3, 1e-3], "batch_size": [256, 256], "epochs": [3, 3], "limit_train": [None, None],
                          "limit_test": [None, None], "precise_bn_samples": [8192, 8192],
                          "evals_per_epoch": [1, 1]})  # fmt: skip
    extra = extra_axes(cells)
    assert extra == ["bn_momentum", "optimizer"]
    assert cell_text(cells.iloc[1], extra) == (
        "none at learning rate 0.001, batch size 256, BN momentum 0.01, optimizer sgd")


def test_numbers_and_lists():
    assert (pct(0.8384), pp(0.107)) == ("83.8%", "10.7 pp")
    assert (plural(1, "run"), plural(2, "run")) == ("1 run", "2 runs")
    assert join_words(["a"]) == "a" and join_words(["a", "b", "c"]) == "a, b and c"
    values = pd.Series({"none": 0.07, "bn_before": math.nan, "bn_after": 0.12})
    assert per_variant(values, pp) == "7.0 pp for none and 12.0 pp for bn_after"
    assert per_variant(pd.Series({"none": math.nan}), pp) == "not measured"


def test_text_from_run_files_cannot_start_markdown():
    from bnstudy.report.wording import md_safe

    assert md_safe("demo\n# Injected heading\n| a | b |") == "demo # Injected heading \\| a \\| b \\|"
    assert md_safe("# cuda`x`") == "cuda\\`x\\`" and md_safe("\n") == "?"


def test_a_p_value_below_the_threshold_never_prints_as_it():
    from bnstudy.report.wording import p_text

    assert [p_text(p) for p in (0.0497, 0.0503, 0.0009, 0.19, 0.0071)] == ["0.049", "0.050", "< 0.001", "0.19", "0.007"]
