"""`bnstudy run`: the files it writes, its progress lines, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from studies import tiny_spec

from bnstudy.cli import main
from bnstudy.config.settings import CSV_COLUMNS, EVALS_COLUMNS

TINY = ["--limit-train", "512", "--limit-test", "256", "--precise-bn-samples", "128", "--device", "cpu"]


def test_run_writes_csv_and_json_and_prints_each_epoch(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bnstudy", "run", "--variant", "bn_before", "--batch-size", "64", "--epochs", "2",
         "--seed", "3", *TINY, "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("epoch")] == ["1/2", "2/2"]
    (csv_path,) = (out / "runs").glob("*.csv")
    assert csv_path.name.startswith("bn_before-adam-lr1e-03-bs64-s3-")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    assert meta["status"] == "complete" and meta["config"]["seed"] == 3 and meta["device"] == "cpu"
    assert {"started", "ended", "torch_version", "bnstudy_version", "git_commit"} <= set(meta)
    assert (sorted(p.name for p in (out / "runs").iterdir())
            == sorted([csv_path.name, csv_path.with_suffix(".json").name]))  # fmt: skip


def test_none_writes_empty_diagnostic_fields(tmp_path):
    assert main(["run", "--variant", "none", "--epochs", "1", *TINY, "--out", str(tmp_path)]) == 0
    (csv_path,) = (tmp_path / "runs").glob("*.csv")
    with open(csv_path) as f:
        row = next(csv.DictReader(f))
    assert row["test_acc_batch_stats"] == "" and row["test_acc_precise_bn"] == ""


def test_every_setting_has_its_run_flag_with_its_default():
    proc = subprocess.run([sys.executable, "-m", "bnstudy", "run", "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert proc.returncode == 0
    for words in ("--norm {batch,batchrenorm,group,layer}", "(default: batch)", "--pool {max,avg}",
                  "--ghost-batch-size N", "--frozen-bn-epochs N"):
        assert words in proc.stdout, words


def test_a_group_norm_run_writes_empty_diagnostic_fields_and_is_done(tmp_path, capsys):
    from bnstudy.results.store import RunStore

    argv = ["run", "--variant", "bn_before", "--norm", "group", "--pool", "avg", "--epochs", "1",
            "--evals-per-epoch", "2", *TINY, "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert "batch_stats" not in capsys.readouterr().out
    (json_path,) = (tmp_path / "runs").glob("*.json")
    run_id, store = json_path.stem, RunStore(tmp_path)
    assert run_id.startswith("bn_before-gn-avgpool-adam-lr1e-03-bs256-s0-")
    (row,) = read_csv(store.csv_path(run_id))
    assert (row["norm"], row["pool"], row["ghost_batch_size"], row["frozen_bn_epochs"]) == ("group", "avg", "0", "0")
    assert row["test_acc_batch_stats"] == "" and row["test_acc_precise_bn"] == ""
    assert [p["test_acc_precise_bn"] for p in read_csv(store.evals_path(run_id))] == ["", ""]
    assert store.state(run_id) == "complete"


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_evals_per_epoch_writes_each_point_where_the_steps_say(tmp_path):
    """512 images in batches of 64: 8 steps an epoch, so 4 points an epoch fall after steps
    2, 4, 6, 8 of each; the last of an epoch is that epoch's CSV row, to the digit."""
    argv = ["run", "--variant", "bn_before", "--lr", "1e-2", "--batch-size", "64", "--epochs", "2",
            "--evals-per-epoch", "4", *TINY, "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    (json_path,) = (tmp_path / "runs").glob("*.json")
    run_id = json_path.stem
    assert "-s0-k4-" in run_id
    assert (sorted(p.name for p in json_path.parent.iterdir())
            == [f"{run_id}.csv", f"{run_id}.evals.csv", json_path.name])  # fmt: skip
    rows, points = read_csv(json_path.with_suffix(".csv")), read_csv(json_path.with_suffix(".evals.csv"))
    assert list(rows[0]) == CSV_COLUMNS and list(points[0]) == EVALS_COLUMNS
    assert ([(p["run_id"], p["epoch"], p["point"]) for p in points]
            == [(run_id, str(e), str(j)) for e in (1, 2) for j in (1, 2, 3, 4)])  # fmt: skip
    assert [int(p["step"]) for p in points] == [2, 4, 6, 8, 10, 12, 14, 16]
    assert [float(p["epoch_fraction"]) for p in points] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    for row, last in zip(rows, points[3::4]):
        assert (last["test_acc"], last["test_acc_precise_bn"]) == (row["test_acc"], row["test_acc_precise_bn"])
    meta = json.loads(json_path.read_text())
    assert meta["config"]["evals_per_epoch"] == 4 and "evals" not in meta


def _assert_one_line_error(capsys, argv, out, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bnstudy: error: "), err
    assert expected in err
    assert not os.path.exists(out)


@pytest.mark.parametrize("flags, expected", [
    (["--variant", "bn_middle"], "--variant"),
    (["--variant", "none", "--lr", "0"], "--lr: must be > 0"),
    (["--variant", "none", "--lr=-1e-3"], "--lr: must be > 0"),
    (["--variant", "none", "--lr", "nan"], "--lr: must be a finite number"),
    (["--variant", "none", "--lr", "fast"], "--lr"),
    (["--variant", "none", "--batch-size", "0"], "--batch-size: must be between"),
    (["--variant", "none", "--batch-size", "60001"], "--batch-size: must be between 1 and 60000"),
    (["--variant", "none", "--limit-train", "100", "--batch-size", "101"], "between 1 and 100"),
    (["--variant", "bn_before", "--batch-size", "1"], "--batch-size: must be between 2"),
    (["--variant", "none", "--epochs", "0"], "--epochs: must be between 1 and 10000 (got 0)"),
    (["--variant", "none", "--optimizer", "rmsprop"], "--optimizer"),
    (["--variant", "none", "--device", "tpu"], "--device"),
    (["--variant", "none", "--epochs", "1", "--data", "/nonexistent/fmnist"], "train-images-idx3-ubyte"),
    (["--lr", "1e-3"], "--variant"),
    (["--variant", "none", "--activation", "gelu"], "--activation"),
    (["--variant", "bn_before", "--bn-momentum", "0"], "--bn-momentum: must be > 0 and <= 1"),
    (["--variant", "bn_before", "--bn-momentum", "-0.5"], "--bn-momentum: must be > 0 and <= 1"),
    (["--variant", "bn_before", "--bn-momentum", "1.01"], "--bn-momentum: must be > 0 and <= 1"),
    (["--variant", "bn_before", "--bn-momentum", "nan"], "--bn-momentum: must be a finite number"),
    (["--variant", "bn_before", "--limit-test", "1"], "--limit-test: must be >= 2 for a variant with BatchNorm"),
    (["--variant", "none", "--seed", str(2**64)], "--seed: must be between 0 and 4294967295"),
    (["--variant", "bn_before", "--precise-bn-samples", str(2**64)],
     "--precise-bn-samples: must be between 2 and 60000"),
    (["--variant", "none", "--epochs", str(10**400)], "--epochs: must be between 1 and 10000"),
    (["--variant", "none", "--lr", "1e-320"], "--lr: must be >= 1e-12 (got 1e-320)"),
    (["--variant", "none", "--evals-per-epoch", "0"], "--evals-per-epoch: must be between 1 and 100 (got 0)"),
    (["--variant", "none", "--evals-per-epoch", "101"], "--evals-per-epoch: must be between 1 and 100 (got 101)"),
    (["--variant", "none", "--limit-train", "512", "--batch-size", "64", "--evals-per-epoch", "9"],
     "--evals-per-epoch: must be at most the 8 training steps of an epoch (got 9)"),
    # the remedies (issue 17): values that are impossible, or asked where they mean nothing
    (["--variant", "bn_before", "--norm", "instance"], "--norm: invalid choice: 'instance'"),
    (["--variant", "none", "--norm", "group"], "--norm: does not apply: variant none has no normalization layer"),
    (["--variant", "none", "--ghost-batch-size", "32"], "--ghost-batch-size: does not apply: variant none has no"),
    (["--variant", "none", "--frozen-bn-epochs", "1"], "--frozen-bn-epochs: does not apply: variant none has no"),
    (["--variant", "bn_before", "--ghost-batch-size", "1"], "--ghost-batch-size: must be 0 (off) or at least 2"),
    (["--variant", "bn_before", "--ghost-batch-size", "48"], "--ghost-batch-size: must divide the batch size 256"),
    (["--variant", "bn_before", "--ghost-batch-size", "-2"], "--ghost-batch-size: must be between 0 and 60000"),
    (["--variant", "bn_before", "--epochs", "3", "--frozen-bn-epochs", "3"],
     "--frozen-bn-epochs: must be less than the 3 epochs"),
    (["--variant", "bn_before", "--norm", "group", "--ghost-batch-size", "32"],
     "--ghost-batch-size: does not apply: norm group does not normalise over the batch"),
    (["--variant", "bn_after", "--norm", "layer", "--bn-momentum", "0.3"],
     "--bn-momentum: does not apply: norm layer keeps no running statistics"),
    (["--variant", "bn_after", "--norm", "layer", "--frozen-bn-epochs", "1"],
     "--frozen-bn-epochs: does not apply: norm layer keeps no running statistics"),
    (["--variant", "bn_before", "--norm", "batchrenorm", "--bn-impl", "scratch"], "--bn-impl: does not apply"),
    (["--variant", "bn_before", "--pool", "min"], "--pool: invalid choice: 'min'"),
    (["--variant", "none", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),  # README: unknown flags
])  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, flags, expected):
    out = tmp_path / "out"
    _assert_one_line_error(capsys, ["run", *flags, "--out", str(out)], out, expected)


def test_corrupt_dataset_is_one_line_exit_2(capsys, tmp_path):
    data = tmp_path / "fmnist"
    data.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):  # fmt: skip
        (data / name).write_bytes(b"\0\0\x08\x03" + b"\0" * 20)
    out = tmp_path / "out"
    _assert_one_line_error(capsys, ["run", "--variant", "none", "--data", str(data), "--out", str(out)], out, str(data))


def test_unwritable_out_is_one_line_exit_2(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "results"
    _assert_one_line_error(capsys, ["run", "--variant", "none", "--epochs", "1", *TINY, "--out", str(out)], out,
                           "not a folder")  # fmt: skip


def test_a_bad_report_jobs_count_is_one_line_before_the_study_is_read(capsys, tmp_path):
    study = tmp_path / "study"
    _assert_one_line_error(capsys, ["report", str(study), "--jobs", "0"], study, "--jobs: must be between 1 and 64")


def test_errors_show_no_traceback_from_the_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bnstudy", "run", "--variant", "none", "--lr", "-1",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == "bnstudy: error: --lr: must be > 0 (got -1.0)\n"
    assert proc.stdout == "" and not (tmp_path / "o").exists()


LONG = "x" * 300  # one name longer than any file system's 255 bytes
ONE_RUN_SPEC = tiny_spec("one", 'variant = ["none"]\n', epochs=1, batch_size=32)


def one_run_spec(tmp_path) -> str:
    path = tmp_path / "one.toml"
    path.write_text(ONE_RUN_SPEC)
    return str(path)


def files_under(path) -> dict:
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if a run starts training (the check must come first)."""
    from bnstudy.engine import runner

    trained = []

    def fit(config, *args, **kwargs):
        trained.append(config.run_id)
        raise RuntimeError("no training in this test")

    monkeypatch.setattr(runner, "fit", fit)
    yield
    assert trained == [], "a run trained before the error"


@pytest.mark.parametrize("command", [
    lambda tmp, spec: ["run", "--variant", "none", *TINY, "--out", f"{tmp}/{LONG}/out"],
    lambda tmp, spec: ["run", "--variant", "none", *TINY, "--data", f"{tmp}/{LONG}", "--out", f"{tmp}/out"],
    lambda tmp, spec: ["sweep", spec, "--out", f"{tmp}/{LONG}", "--device", "cpu"],
    lambda tmp, spec: ["sweep", f"{tmp}/{LONG}.toml", "--device", "cpu"],
    lambda tmp, spec: ["status", f"{tmp}/{LONG}"],
    lambda tmp, spec: ["status", f"{tmp}/{LONG}.toml"],
    lambda tmp, spec: ["status", spec, "--out", f"{tmp}/{LONG}"],
    lambda tmp, spec: ["report", f"{tmp}/{LONG}"],
], ids=["run --out", "run --data", "sweep --out", "sweep SPEC", "status DIR", "status SPEC", "status --out",
        "report DIR"])  # fmt: skip
def test_a_name_too_long_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, no_training, command):
    argv = command(tmp_path, one_run_spec(tmp_path))
    before = files_under(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnstudy: error: ") and err.count("\n") == 1, err
    assert "cannot use this path (File name too long)" in err
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize("problem", ["runs is a file", "a name too long below a missing folder"])
def test_an_unwritable_results_folder_is_found_before_any_training(capsys, tmp_path, no_training, command, problem):
    if problem == "runs is a file":
        out, expected = tmp_path / "out", "runs: cannot create a results folder there (it is not a folder)"
        out.mkdir()
        (out / "runs").write_text("a file where the runs go\n")
    else:
        out, expected = tmp_path / "missing" / LONG, "cannot use this path (a name of 300 bytes"
    argv = ["run", "--variant", "none", *TINY] if command == "run" else ["sweep", one_run_spec(tmp_path)]
    before = files_under(tmp_path)
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnstudy: error: ") and err.count("\n") == 1 and expected in err, err
    assert files_under(tmp_path) == before


def test_a_path_with_a_newline_stays_on_the_error_line(capsys, tmp_path):
    spec = tmp_path / "a\nb\x1b.toml"
    assert main(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err == f"bnstudy: error: {tmp_path}/a\\nb\\x1b.toml: cannot read the spec (No such file or directory)\n"


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`bnstudy sweep --dry-run ... | head -1`: stdout's reader is gone before the output."""
    spec = tmp_path / "one.toml"
    spec.write_text(ONE_RUN_SPEC)
    read, write = os.pipe()
    os.close(read)  # every write to the pipe fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "bnstudy", "sweep", str(spec), "--out", str(tmp_path / "out"),
                               "--dry-run"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")
