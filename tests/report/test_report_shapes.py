"""`bnstudy report` over small generated studies of every shape: 1-4 epochs, 1-3 seeds, any
non-empty set of variants, one or two learning rates, with runs complete, diverged, stuck at
chance, failed, damaged or missing. Hand-made run files (tests/studies.py) whose accuracies
a seeded generator chooses; each study must report without error and its counts must add
up. (One batch size: more panels would only slow the figures down, about 1 s a panel.)"""

from __future__ import annotations

import collections
import itertools
import random
import re

import pandas as pd
import pytest
from studies import VARIANTS, cfg, hand_rows, write_hand_run

from bnstudy.results import aggregate
from bnstudy.cli import main
from bnstudy.report.figures import FIGURES, UNDRAWN
from bnstudy.results.store import RunStore

FATES = ["complete", "complete", "diverged", "stuck", "failed", "damaged", "missing"]


STUDIES = (2, 3, 10, 16, 17, 22)  # generator seeds picked so that together they hold every edge case (checked below)


def shape(seed: int) -> dict:
    """The grid of generated study `seed`: variants, lrs, seeds, epochs."""
    rng = random.Random(seed)
    return {"variant": rng.sample(VARIANTS, rng.randint(1, 3)), "lr": rng.sample([1e-3, 1e-2], rng.randint(1, 2)),
            "seed": list(range(rng.randint(1, 3))), "epochs": rng.randint(1, 4)}  # fmt: skip


def spec_text(grid: dict) -> str:
    return (f'name = "hand"\nepochs = {grid["epochs"]}\nbatch_size = 256\nlimit_train = 1024\nlimit_test = 512\n'
            f'[grid]\nvariant = {grid["variant"]!r}\nlr = {grid["lr"]!r}\nseed = {grid["seed"]!r}\n')  # fmt: skip


def write_run(root, config, fate: str, rng: random.Random) -> None:
    """One run's files as `fate` leaves them (none for "missing")."""
    if fate == "missing":
        return
    acc = [0.1] * config.epochs if fate == "stuck" else [round(rng.uniform(0.1, 0.9), 3) for _ in range(config.epochs)]
    nan_from = rng.randint(1, config.epochs) if fate == "diverged" else None
    rows = hand_rows(config, acc[:nan_from], nan_from=nan_from)
    write_hand_run(root, config, rows, status={"diverged": "diverged", "failed": "failed"}.get(fate, "complete"))
    if fate == "damaged":  # a CSV cut short beside its `complete` JSON
        path = RunStore(root).csv_path(config.run_id)
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def generate(root, seed: int) -> collections.Counter:
    """Generated study `seed` in `root`, with its spec.toml; how many runs of each fate it has."""
    grid, rng = shape(seed), random.Random(seed)
    RunStore(root).write_spec(spec_text(grid))
    fates = collections.Counter()
    for i, (variant, lr, s) in enumerate(itertools.product(grid["variant"], grid["lr"], grid["seed"])):
        fate = "complete" if i == 0 else rng.choice(FATES)  # one done run at least: else nothing to report
        write_run(root, cfg(variant, lr=lr, seed=s, epochs=grid["epochs"]), fate, rng)
        fates[fate] += 1
    return fates


def test_the_generated_studies_hold_every_edge_case(tmp_path):
    shapes = [shape(seed) for seed in STUDIES]
    assert {1, 4} <= {grid["epochs"] for grid in shapes} and {1, 3} <= {len(grid["seed"]) for grid in shapes}
    assert any(grid["epochs"] == 1 and len(grid["seed"]) > 1 for grid in shapes)
    assert ["none"] in [grid["variant"] for grid in shapes] and {1, 3} <= {len(grid["variant"]) for grid in shapes}
    assert any(len(grid["variant"]) == len(grid["lr"]) == 1 for grid in shapes)  # a single cell
    fates = sum((generate(tmp_path / str(seed), seed) for seed in STUDIES), collections.Counter())
    assert set(fates) == set(FATES)


@pytest.mark.parametrize("seed", STUDIES)
def test_any_small_study_reports_and_its_counts_add_up(tmp_path, capsys, seed):
    fates = generate(tmp_path, seed)
    assert main(["report", str(tmp_path)]) == 0, capsys.readouterr().err
    done, expected = fates["complete"] + fates["diverged"] + fates["stuck"], fates.total()
    printed = capsys.readouterr().out
    assert printed.startswith(f"{done} runs reported; skipped: ")

    study = aggregate.load_results(tmp_path)
    missing = aggregate.missing_runs(study)
    assert len(study.expected) == expected and len(missing) + done == expected
    fate_of = {"failed": "failed", "damaged": "damaged", "not run": "missing"}  # the reason's first word(s)
    reasons = collections.Counter(fate_of[reason.split(":")[0]] for reason in missing["reason"])
    assert reasons == collections.Counter({fate: fates[fate] for fate in fate_of.values() if fates[fate]})

    summary, cells = pd.read_csv(tmp_path / "summary.csv"), pd.read_csv(tmp_path / "cells.csv")
    assert len(summary) == done and cells["n"].sum() == done and cells["n_expected"].sum() == expected
    assert cells["n_diverged"].sum() == summary["diverged"].sum() == fates["diverged"]
    text = (tmp_path / "report.md").read_text()
    assert f"**Runs**: {done} of {expected} done" in text
    drawn = re.findall(r"\]\(figures/(\w+)\.png\)", text)
    for name in drawn:
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0
    undrawn = [name for name in FIGURES if name not in drawn]
    if not drawn:
        assert "None: no run has an epoch with finite loss and accuracy." in text
    elif undrawn:
        assert f"Not drawn: {'; '.join(f'{FIGURES[n][0]}: {UNDRAWN[n]}' for n in undrawn)}." in text
