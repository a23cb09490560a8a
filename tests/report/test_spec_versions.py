"""`bnstudy report` on a study folder swept again after its spec changed: the report covers
the runs of spec.toml (the last sweep's spec), lists the others as extra and blends them in
only with --include-extra; without a spec.toml it reports every run there."""

from __future__ import annotations

import pandas as pd
import pytest
from studies import cfg, hand_rows, write_hand_run

from bnstudy.cli import main
from bnstudy.results.store import RunStore

# The spec as last swept: 3 epochs; an earlier sweep into the same folder ran 2 epochs.
SPEC = """
name = "hand"
epochs = 3
lr = 1e-3
batch_size = 256
limit_train = 1024
limit_test = 512
[grid]
variant = ["none", "bn_before"]
seed = [0, 1]
"""


@pytest.fixture
def swept_twice(tmp_path):
    """4 runs of the earlier 2-epoch spec (all complete, final accuracy 95%, better than any
    of the spec's), 3 of the 4 runs of the 3-epoch spec (bn_before seed 1 not run)."""
    RunStore(tmp_path).write_spec(SPEC)
    for variant in ("none", "bn_before"):
        for seed in (0, 1):
            old = cfg(variant, seed=seed, epochs=2)
            write_hand_run(tmp_path, old, hand_rows(old, [0.9, 0.95]))
            if (variant, seed) != ("bn_before", 1):
                new = cfg(variant, seed=seed, epochs=3)
                write_hand_run(tmp_path, new, hand_rows(new, [0.5, 0.6, 0.7 + 0.01 * seed]))
    return tmp_path


def report(root, capsys, *flags) -> tuple[str, pd.DataFrame, pd.DataFrame, str]:
    assert main(["report", str(root), *flags]) == 0
    printed = capsys.readouterr().out
    return printed, pd.read_csv(root / "summary.csv"), pd.read_csv(root / "cells.csv"), (root / "report.md").read_text()


def test_report_covers_the_specs_runs_and_lists_the_others(swept_twice, capsys):
    printed, summary, cells, text = report(swept_twice, capsys)
    extra = "4 runs in runs/ not in spec.toml (4 complete), left out (`--include-extra` reports the done ones)"
    assert printed.startswith(f"3 runs reported; skipped: none\nextra: {extra}\n")
    assert "incomplete: bn_before at learning rate 0.001, batch size 256: missing seed 1 (not run)" in printed
    assert summary["epochs"].tolist() == [3, 3, 3] and cells["n"].sum() == 3 and cells["n_expected"].sum() == 4
    assert "**Runs**: 3 of 4 done (3 complete, 0 diverged)" in text
    assert f"**Extra runs**: {extra}." in text
    assert summary["final_acc"].max() == pytest.approx(0.71) and "95.0" not in text  # the old runs' 95% stays out


def test_include_extra_reports_them_beside_the_specs_runs(swept_twice, capsys):
    printed, summary, cells, text = report(swept_twice, capsys, "--include-extra")
    assert printed.startswith("7 runs reported; skipped: none\n"
                              "extra: 4 runs in runs/ not in spec.toml (4 complete), the 4 done ones included\n")
    assert sorted(summary["epochs"]) == [2, 2, 2, 2, 3, 3, 3] and cells["n"].sum() == 7
    assert "**Runs**: 3 of 4 done (3 complete, 0 diverged)" in text  # the spec's runs, counted apart
    assert summary["final_acc"].max() == pytest.approx(0.95)


def test_without_a_spec_every_run_there_is_reported(swept_twice, capsys):
    (swept_twice / "spec.toml").unlink()
    store = RunStore(swept_twice)
    store.json_path("none-adam-lr1e-03-bs256-s7-000000").write_text("{")  # files without a config: not extra
    store.csv_path("none-adam-lr1e-03-bs256-s8-000000").write_text("run_id\n")
    printed, summary, _, text = report(swept_twice, capsys)
    assert printed.startswith("7 runs reported; skipped: 1 damaged, 1 without its JSON (in flight or killed)\n")
    assert "extra:" not in printed and "Extra runs" not in text
    assert len(summary) == 7 and "7 runs in 4 cells (the runs in runs/: no spec.toml)" in text


def test_only_extra_runs_done_is_one_error_line(tmp_path, capsys):
    RunStore(tmp_path).write_spec(SPEC)
    old = cfg("none", epochs=2)
    write_hand_run(tmp_path, old, hand_rows(old, [0.9, 0.95]))
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"bnstudy: error: {tmp_path}: no complete or diverged run to report "
                                       f"(1 not in spec.toml)\n")  # fmt: skip
