"""Damaged runs (files cut short, emptied, edited or copied from another run) through every
command: `status` names them, `sweep` sets their files aside and redoes them, `report`
leaves them out and names them. Real tiny runs for the sweep, hand-made ones for the report."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from studies import hand_rows, tiny_spec, write_hand_run

from bnstudy.cli import main
from bnstudy.config.spec import load_study
from bnstudy.results.store import RunStore

SPEC = tiny_spec("damage", 'variant = ["none", "bn_before"]\nseed = [0]\n')


@pytest.fixture
def swept(tmp_path):
    """A finished sweep of 2 real tiny runs: (spec path, results folder, its configs)."""
    threads = torch.get_num_threads()
    spec, out = tmp_path / "damage.toml", tmp_path / "out"
    spec.write_text(SPEC)
    try:
        assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1", "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)  # an in-process sweep sets one thread, as a worker does
    return spec, out, load_study(spec).runs()


def test_sweep_redoes_damaged_runs_after_setting_their_files_aside(swept, capsys):
    spec, out, (cut, emptied) = swept
    store = RunStore(out)
    lines = store.csv_path(cut.run_id).read_text().splitlines(keepends=True)
    store.csv_path(cut.run_id).write_text("".join(lines[:-1]))  # a CSV cut short beside its `complete` JSON
    store.csv_path(emptied.run_id).write_text("")
    files = [path(c.run_id) for c in (cut, emptied) for path in (store.csv_path, store.json_path)]
    damaged = sorted(p.read_bytes() for p in files)
    capsys.readouterr()

    assert main(["status", str(out)]) == 0
    status = capsys.readouterr().out
    assert status.splitlines()[4].split() == ["all", "0", "0", "0", "2", "0", "2"]
    assert f"  {cut.run_id}: CSV has 1 epochs, JSON says 2 of 2" in status
    assert f"  {emptied.run_id}: empty CSV" in status

    threads = torch.get_num_threads()
    try:
        assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1", "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert f"2 runs set aside in {out / 'damaged'}, to be redone:" in printed
    assert "0 already done, 2 to run" in printed
    assert [store.state(c.run_id) for c in (cut, emptied)] == ["complete", "complete"]
    assert json.loads(store.json_path(cut.run_id).read_text())["epochs_done"] == 2
    assert store.csv_path(cut.run_id).read_text().count("\n") == 3  # header and 2 epochs, trained again
    kept = sorted((out / "damaged").iterdir())
    assert all(p.name.startswith((cut.run_id, emptied.run_id)) for p in kept)
    assert sorted(p.read_bytes() for p in kept) == damaged  # set aside as they were, not deleted


HAND_SPEC = """
name = "hand"
variant = "none"
epochs = 4
lr = 1e-3
batch_size = 256
limit_train = 1024
limit_test = 512
[grid]
seed = [0, 1, 2]
"""
ACCURACIES = {0: [0.5, 0.6, 0.7, 0.8], 1: [0.5, 0.6, 0.7, 0.9], 2: [0.4, 0.5, 0.6, 0.7]}


def cut_short(store: RunStore, run_id: str, other: str) -> None:  # the last epoch lost: 0.7 would pass for final
    path = store.csv_path(run_id)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def emptied(store: RunStore, run_id: str, other: str) -> None:
    store.csv_path(run_id).write_text("")


def text_in_a_cell(store: RunStore, run_id: str, other: str) -> None:
    path = store.csv_path(run_id)
    path.write_text(path.read_text().replace(",0.6,0.7,", ",0.6,oops,"))


def copied_from_another_run(store: RunStore, run_id: str, other: str) -> None:
    store.csv_path(run_id).write_bytes(store.csv_path(other).read_bytes())


@pytest.mark.parametrize("damage, reason", [
    (cut_short, "CSV has 3 epochs, JSON says 4 of 4"),
    (emptied, "empty CSV"),
    (text_in_a_cell, "CSV test_acc 'oops' is not a number"),
    (copied_from_another_run, "CSV row 1 is run "),
])  # fmt: skip
def test_status_and_report_agree_on_a_damaged_run_and_report_leaves_it_out(tmp_path, capsys, damage, reason):
    store = RunStore(tmp_path)
    store.write_spec(HAND_SPEC)
    configs = load_study(store.spec_path).runs()
    for config in configs:
        write_hand_run(tmp_path, config, hand_rows(config, ACCURACIES[config.seed]))
    damaged, other = configs[1].run_id, configs[0].run_id
    damage(store, damaged, other)

    assert main(["status", str(tmp_path)]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[3].split() == ["all", "2", "0", "0", "1", "0", "3"] and status[5].startswith(f"  {damaged}: {reason}")

    assert main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("2 runs reported; skipped: 1 damaged\ndamaged runs, left out")
    assert f"\n  {damaged}: {reason}" in printed
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["seed"].tolist() == [0, 2] and summary["final_acc"].tolist() == [0.8, 0.7]
    text = (tmp_path / "report.md").read_text()
    assert "**Runs**: 2 of 3 done (2 complete, 0 diverged); skipped: 1 damaged." in text
    assert f"{damaged}: {reason}" in text and "seed 1 (damaged: " in text
