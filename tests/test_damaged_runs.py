"""Damaged runs (files cut short, emptied, edited or copied from another run) through every
command: `status` names them, `sweep` sets their files aside and redoes them, `report`
leaves them out and names them. Real tiny runs for the sweep, hand-made ones for the report."""

from __future__ import annotations

import json

import pytest
import torch

from bnstudy.cli import main
from bnstudy.spec import load_study
from bnstudy.store import RunStore

SPEC = """
name = "damage"
epochs = 2
limit_train = 256
limit_test = 200
precise_bn_samples = 64
batch_size = 64
lr = 1e-3
[grid]
variant = ["none", "bn_before"]
seed = [0]
"""


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
    damaged = sorted(p.read_bytes() for c in (cut, emptied) for p in (store.csv_path(c.run_id), store.json_path(c.run_id)))
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
    assert f"2 damaged runs set aside in {out / 'damaged'}, to be redone:" in printed
    assert "0 already done, 2 to run" in printed
    assert [store.state(c.run_id) for c in (cut, emptied)] == ["complete", "complete"]
    assert json.loads(store.json_path(cut.run_id).read_text())["epochs_done"] == 2
    assert store.csv_path(cut.run_id).read_text().count("\n") == 3  # header and 2 epochs, trained again
    kept = sorted((out / "damaged").iterdir())
    assert all(p.name.startswith((cut.run_id, emptied.run_id)) for p in kept)
    assert sorted(p.read_bytes() for p in kept) == damaged  # set aside as they were, not deleted
