"""The results store: what counts as done (whole files that agree with each other) and what
is damaged, setting damaged runs aside, atomic files, the spec as run, stale temporary
files, the study lock and the status table."""

import contextlib
import csv
import dataclasses
import errno
import json
import math
import os
import random
import resource
import signal
import stat
from pathlib import Path

import pytest
from studies import hand_rows

from bnstudy.errors import UserError
from bnstudy.config.spec import RunConfig
from bnstudy.results.runfiles import RunOutcome, RunState, RunStatus
from bnstudy.engine.runner import run_metadata
from bnstudy.config import settings
from bnstudy.results import store as store_module
from bnstudy.config.settings import CSV_COLUMNS, EVALS_COLUMNS, steps_per_epoch
from bnstudy.results.store import RunStore, atomic_write_text, check_writable, format_status, rows_to_csv

CONFIGS = [RunConfig(variant=v, lr=1e-3, batch_size=64, epochs=2, seed=s) for v in ("none", "bn_after") for s in (0, 1)]
FIXTURE = Path(__file__).parents[1] / "fixtures" / "v0_1_study"
# Two runs whose 6-digit hashes (settings.LEGACY_RUN_ID_DIGITS) collide (issue 18).
COLLIDING = tuple(RunConfig(variant="none", lr=lr, batch_size=128, limit_train=512, limit_test=256,
                            precise_bn_samples=256, seed=29, epochs=1) for lr in (0.001009, 0.001442))  # fmt: skip
TIMES = ("2026-11-27T05:21:35+00:00", "2026-11-27T05:21:36+00:00")  # a run's started and ended


def outcome(config: RunConfig, status: str, rows: list[dict], points=(), error: str | None = None) -> RunOutcome:
    """The RunOutcome of a run of `config` that finished `rows` (and `points`), as runner makes it."""
    return RunOutcome(rows, run_metadata(config, status, "cpu", *TIMES, error, epochs_done=len(rows)), list(points))


def write(store: RunStore, config: RunConfig, status: str, epochs: int = 2) -> None:
    rows = hand_rows(config, [0.5] * epochs, nan_from=epochs if status == "diverged" else None)
    store.write_run(outcome(config, status, rows, error="RuntimeError: boom" if status == "failed" else None))


def located(store: RunStore, configs) -> dict:
    """config -> RunStore.locate of each of `configs`, as a sweep checks them."""
    return {config: store.locate(config) for config in configs}


def test_done_means_whole_files_that_agree(tmp_path):
    store = RunStore(tmp_path)
    complete, diverged, failed, pending = CONFIGS
    write(store, complete, "complete")
    write(store, diverged, "diverged", epochs=1)  # a NaN loss in its last epoch, as train.fit writes it
    write(store, failed, "failed", epochs=1)
    assert [store.state(c.run_id) for c in CONFIGS] == ["complete", "diverged", "failed", "pending"]
    assert [store.state(c.run_id).is_done() for c in CONFIGS] == [True, True, False, False]
    assert store.recorded_run_ids() == {complete.run_id, diverged.run_id, failed.run_id}
    check = store.check(complete.run_id)
    assert check.config == complete and check.reason == "" and check.metadata["epochs_done"] == 2
    assert [row["epoch"] for row in check.rows] == [1, 2] and check.rows[1]["test_acc"] == 0.5
    assert math.isnan(check.rows[0]["test_acc_precise_bn"])  # `none` has no BN: an empty cell
    assert math.isnan(store.check(diverged.run_id).rows[0]["train_loss"])


def test_a_kill_leaves_pending_and_anything_else_is_damaged(tmp_path):
    store = RunStore(tmp_path)
    truncated, csv_only, json_only = CONFIGS[:3]
    write(store, truncated, "complete")
    text = store.json_path(truncated.run_id).read_text()
    store.json_path(truncated.run_id).write_text(text[: len(text) // 2])
    write(store, csv_only, "complete")
    store.json_path(csv_only.run_id).unlink()  # killed between the two moves: CSV first, JSON last
    write(store, json_only, "complete")
    store.csv_path(json_only.run_id).unlink()
    checks = [store.check(c.run_id) for c in (truncated, csv_only, json_only)]
    assert [(c.state, c.reason) for c in checks] == [
        ("damaged", "JSON does not parse"),
        ("pending", "no JSON (in flight or killed)"),
        ("damaged", "no CSV"),
    ]


def cut_short(lines):  # a complete run's CSV that lost its last epoch
    return lines[:-1]


def cut_mid_row(lines):
    return lines[:-1] + [lines[-1][: lines[-1].index(",") + 3]]


def renumbered(lines):
    return [lines[0], lines[1], lines[2].replace(",2,", ",3,", 1)]


# Row 1 of the CSV below ends "...,0.5,0.5,0.6,0.45,0.44,0.46,2.0,1.0,100.0": losses 0.5 and
# 0.6, test accuracy 0.45, batch-stats and PreciseBN accuracies 0.44 and 0.46.
def percent(lines):  # an accuracy written in % instead of a fraction
    return [lines[0], lines[1].replace(",0.6,0.45,", ",0.6,45,"), lines[2]]


def text_in_cell(lines):
    return [lines[0], lines[1].replace(",0.6,0.45,", ",0.6,n/a,"), lines[2]]


def lost_diagnostic(lines):  # a BN run's PreciseBN cell emptied
    return [lines[0], lines[1].replace(",0.44,0.46,", ",0.44,,"), lines[2]]


def diagnostic_without_bn(lines):  # (applied to the `none` run below)
    return [lines[0], lines[1].replace(",,", ",0.5,", 1), lines[2]]


def other_columns(lines):
    return [lines[0].replace("test_acc_precise_bn", "test_acc_ema"), *lines[1:]]


def cell(row: int, column: str, value: str):
    """A damage: `value` in `column` of CSV row `row` (1-based; 0 is the header)."""

    def damage(lines):
        table = list(csv.reader(lines))
        table[row][table[0].index(column)] = value
        return [",".join(line) for line in table]

    return damage


@pytest.mark.parametrize("damage, reason", [
    (cut_short, "CSV has 1 epochs, JSON says 2 of 2"),
    (cut_mid_row, f"CSV row 2 has 2 fields, not {len(CSV_COLUMNS)}"),
    (lambda lines: [], "empty CSV"),
    (lambda lines: lines[:1], "CSV has 0 epochs, JSON says 2 of 2"),
    (renumbered, "CSV row 2 says epoch '3'"),
    (text_in_cell, "CSV test_acc 'n/a' is not a number"),
    (percent, "CSV test_acc '45' is out of range"),
    (lost_diagnostic, "CSV test_acc_precise_bn '' is not a number"),
    (diagnostic_without_bn, "CSV test_acc_batch_stats '0.5' in a run without BN"),
    (other_columns, "CSV columns are not a run's"),
    (cell(1, "train_loss", "nan"), "CSV train_loss nan in epoch 1 of a complete run"),
    (cell(1, "test_loss", "nan"), "CSV test_loss nan in epoch 1 of a complete run"),  # train_loss finite
    (cell(2, "test_loss", "inf"), "CSV test_loss inf in epoch 2 of a complete run"),
    (cell(1, "train_loss", "-0.5"), "CSV train_loss '-0.5' is out of range"),
    (cell(1, "test_loss", "-inf"), "CSV test_loss '-inf' is out of range"),
    (cell(2, "eval_seconds", "-1"), "CSV eval_seconds '-1' is out of range"),
    (cell(2, "samples_per_second", "inf"), "CSV samples_per_second 'inf' is out of range"),
    (cell(1, "train_acc", "1.5"), "CSV train_acc '1.5' is out of range"),
    (cell(1, "test_acc_batch_stats", "-0.1"), "CSV test_acc_batch_stats '-0.1' is out of range"),
    (cell(1, "lr", "999"), "CSV row 1 has lr '999', its JSON 0.001"),
    (cell(2, "study", "other"), "CSV row 2 has study 'other', its JSON 'single'"),
    (cell(1, "bn_momentum", "0.2"), "CSV row 1 has bn_momentum '0.2', its JSON 0.1"),
    (cell(2, "seed", "1"), "CSV row 2 has seed '1', its JSON 0"),
    (cell(1, "variant", "bn_before"), "CSV row 1 has variant 'bn_before', its JSON 'bn_after'"),
])  # fmt: skip
def test_a_csv_that_is_not_whole_is_damaged(tmp_path, damage, reason):
    store = RunStore(tmp_path)
    config = CONFIGS[0] if damage is diagnostic_without_bn else CONFIGS[2]
    rows = hand_rows(config, [0.45, 0.5], train_acc=[0.5, 0.5])
    store.write_run(outcome(config, "complete", rows))
    path = store.csv_path(config.run_id)
    assert store.state(config.run_id) == "complete"
    lines = damage(path.read_text().splitlines())
    path.write_text("".join(line + "\n" for line in lines))
    check = store.check(config.run_id)
    assert (check.state, check.reason, check.rows) == ("damaged", reason, None)
    assert not store.state(config.run_id).is_done()


def edit_json(store: RunStore, run_id: str, edit) -> None:
    path = store.json_path(run_id)
    metadata = json.loads(path.read_text())
    edit(metadata)
    path.write_text(json.dumps(metadata))


@pytest.mark.parametrize("edit, reason", [
    (lambda m: m.pop("config"), "JSON has no config"),
    (lambda m: m.update(status="running"), "JSON has no run status"),
    (lambda m: m.pop("epochs_done"), "JSON has no epochs_done"),
    (lambda m: m.update(epochs_done=1), "complete after 1 of 2 epochs"),
    (lambda m: m.update(status="diverged", epochs_done=1), "CSV has 2 epochs, JSON says 1 of 2"),
    (lambda m: m["config"].update(seed=1), f"JSON config is run {CONFIGS[1].run_id}"),
    (lambda m: m["config"].update(lr=-1), "JSON config is not a valid run (lr: must be > 0 (got -1))"),
    (lambda m: m["config"].update(momentum=0.9), "JSON config is not a valid run"),
    (lambda m: m.pop("study"), "JSON config is not a valid run (study: must be a string (got None))"),
    (lambda m: m.update(epochs_done=True), "JSON has no epochs_done"),
    (lambda m: m.update(epochs_done=2.0), "JSON has no epochs_done"),
    (lambda m: m.update(started="yesterday"), "JSON started 'yesterday' is not a run's"),
    (lambda m: m.pop("ended"), "JSON ended None is not a run's"),
    (lambda m: m.update(group_size=0), "JSON group_size 0 is not a run's"),
    (lambda m: m.update(group_size=True), "JSON group_size True is not a run's"),
    (lambda m: m.update(device=5), "JSON device 5 is not a run's"),
    (lambda m: m.update(torch_version=None), "JSON torch_version None is not a run's"),
    (lambda m: m.update(git_commit=["HEAD"]), "JSON git_commit ['HEAD'] is not a run's"),
    (lambda m: m.update(run_id=CONFIGS[1].run_id), f"JSON run_id '{CONFIGS[1].run_id}' is not the file's"),
    (lambda m: m.update(error="RuntimeError: boom"), "JSON error 'RuntimeError: boom' for a complete run"),
])  # fmt: skip
def test_a_json_that_disagrees_is_damaged(tmp_path, edit, reason):
    store = RunStore(tmp_path)
    write(store, CONFIGS[0], "complete")
    edit_json(store, CONFIGS[0].run_id, edit)
    check = store.check(CONFIGS[0].run_id)
    assert check.state == "damaged" and check.reason.startswith(reason)


@pytest.mark.parametrize("epochs, reason", [(3, "CSV has 3 epochs, JSON says 3 of 2"),
                                            (0, "CSV has 0 epochs, JSON says 0 of 2")])  # fmt: skip
def test_a_diverged_run_needs_one_to_its_configs_epochs(tmp_path, epochs, reason):
    store = RunStore(tmp_path)
    config = CONFIGS[0]  # 2 epochs; a diverged run keeps the epoch whose loss turned non-finite
    rows = hand_rows(config, [0.5] * epochs, nan_from=epochs)
    store.write_run(outcome(config, "diverged", rows))
    assert store.check(config.run_id).reason == reason


def test_another_runs_csv_copied_over_is_damaged(tmp_path):
    store = RunStore(tmp_path)
    mine, other = CONFIGS[0], CONFIGS[1]
    write(store, mine, "complete")
    write(store, other, "complete")
    store.csv_path(mine.run_id).write_bytes(store.csv_path(other.run_id).read_bytes())
    assert store.check(mine.run_id).reason == f"CSV row 1 is run {other.run_id}"


def test_settings_missing_from_an_old_json_take_their_defaults(tmp_path):
    store = RunStore(tmp_path)
    write(store, CONFIGS[0], "complete")
    edit_json(store, CONFIGS[0].run_id, lambda m: m["config"].pop("precise_bn_samples"))  # at its default
    assert store.state(CONFIGS[0].run_id) == "complete"
    old = RunStore(FIXTURE)  # written by bnstudy 0.1.0
    assert {old.state(run_id) for run_id in old.recorded_run_ids()} == {"complete"}


def test_damaged_runs_are_set_aside_not_deleted(tmp_path):
    store = RunStore(tmp_path)
    damaged, whole, failed = CONFIGS[:3]
    for config in CONFIGS[:3]:
        write(store, config, "failed" if config is failed else "complete")
    csv_text = "".join(store.csv_path(damaged.run_id).read_text().splitlines(keepends=True)[:-1])
    store.csv_path(damaged.run_id).write_text(csv_text)
    json_text = store.json_path(damaged.run_id).read_text()
    moved = store.set_aside_unusable(located(store, CONFIGS))
    assert moved == [(damaged.run_id, "CSV has 1 epochs, JSON says 2 of 2")]
    kept = sorted(store.damaged_dir.iterdir())
    assert [p.name.split(".")[0] for p in kept] == [damaged.run_id] * 2
    assert [p.suffix for p in kept] == [".csv", ".json"]
    assert kept[0].read_text() == csv_text and kept[1].read_text() == json_text
    assert kept[0].name[:-4] == kept[1].name[:-5]  # one time stamp for both files
    assert [store.state(c.run_id) for c in CONFIGS[:3]] == ["pending", "complete", "failed"]
    assert store.set_aside_unusable(located(store, CONFIGS)) == []


def test_a_damaged_run_that_cannot_be_set_aside_is_one_error_and_stays(tmp_path):
    store = RunStore(tmp_path)
    write(store, CONFIGS[0], "complete")
    store.csv_path(CONFIGS[0].run_id).write_text("")
    store.damaged_dir.write_text("a file in the way")
    with pytest.raises(UserError, match=f"{store.damaged_dir}: cannot set damaged run {CONFIGS[0].run_id} aside"):
        store.set_aside_unusable(located(store, CONFIGS[:1]))
    assert store.check(CONFIGS[0].run_id).reason == "empty CSV"


def test_writes_are_whole_files_with_ordinary_permissions(tmp_path):
    store = RunStore(tmp_path)
    write(store, CONFIGS[0], "complete")
    files = sorted(p.name for p in store.runs_dir.iterdir())
    assert files == sorted([f"{CONFIGS[0].run_id}.csv", f"{CONFIGS[0].run_id}.json"])  # no temporary left
    assert json.loads(store.json_path(CONFIGS[0].run_id).read_text())["status"] == "complete"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(store.csv_path(CONFIGS[0].run_id).stat().st_mode) == 0o666 & ~umask


def test_spec_copy_and_stale_temporaries(tmp_path):
    store = RunStore(tmp_path)
    store.runs_dir.mkdir(parents=True)
    (store.runs_dir / ".x.json.abc.tmp").write_text("{")
    (tmp_path / ".spec.toml.abc.tmp").write_text("na")
    assert store.write_spec("name = 'x'\n") == tmp_path / "spec.toml"
    assert store.remove_stale_temps() == 2
    assert not list(tmp_path.rglob("*.tmp")) and store.spec_path.read_text() == "name = 'x'\n"


def test_a_second_lock_on_a_study_is_refused(tmp_path):
    store = RunStore(tmp_path / "study")
    with store.lock():
        with pytest.raises(UserError, match="another sweep is writing this study"):
            with RunStore(tmp_path / "study").lock():
                pass
    with store.lock():  # released on exit
        pass


def test_status_table_counts_states_per_variant_and_names_the_damaged_runs(tmp_path):
    store = RunStore(tmp_path)
    write(store, CONFIGS[0], "complete")
    write(store, CONFIGS[2], "failed", epochs=1)
    write(store, CONFIGS[3], "complete")
    store.csv_path(CONFIGS[3].run_id).write_text("")
    write(store, RunConfig(variant="none", lr=0.5, batch_size=8, epochs=1), "complete")  # another spec's run
    lines = format_status(CONFIGS, store).splitlines()
    assert lines[0].split() == ["variant", "done", "diverged", "failed", "damaged", "pending", "total"]
    assert [line.split() for line in lines[1:4]] == [
        ["none", "1", "0", "0", "0", "1", "2"],
        ["bn_after", "0", "0", "1", "1", "0", "2"],
        ["all", "1", "0", "1", "1", "1", "4"],
    ]
    assert lines[4].startswith("damaged (not counted as done")
    assert lines[5] == f"  {CONFIGS[3].run_id}: empty CSV"
    assert "1 more runs" in lines[6]


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "hard link", "folder"])
def test_a_lock_that_is_not_the_folders_own_file_is_refused_and_left_alone(tmp_path, kind):
    store, target = RunStore(tmp_path / "study"), tmp_path / "someone-elses-file"
    store.root.mkdir()
    lock = store.root / ".lock"
    if kind != "dangling symlink":
        target.write_text("keep me\n")
    if kind == "folder":
        lock.mkdir()
    elif kind == "hard link":
        os.link(target, lock)
    else:
        lock.symlink_to(target)
    with pytest.raises(UserError, match=f"^{lock}: cannot use it as the study's lock .*; remove it"):
        with store.lock():
            pass
    if kind == "dangling symlink":
        assert not target.exists()  # not created through the link
    elif kind != "folder":
        assert target.read_text() == "keep me\n"


@contextlib.contextmanager
def disk_full_after(size: int):
    """Writes to any file past its first `size` bytes fail (EFBIG), as on a disk that fills
    up: whatever writes the file, part of the data lands and then the write raises."""
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


def test_a_write_that_fails_half_way_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "spec.toml"
    atomic_write_text(path, "old\n" * 100)
    with disk_full_after(200), pytest.raises(OSError):
        atomic_write_text(path, "new\n" * 100)
    assert path.read_text() == "old\n" * 100
    assert os.listdir(tmp_path) == ["spec.toml"]  # no temporary left


def test_a_write_syncs_its_folder_once_the_new_file_is_in_place(tmp_path, monkeypatch):
    """The new name lives in the folder, which the file's own fsync does not write: without
    the folder's, a power cut after the write may leave the old file, or none."""
    path, synced, fsync = tmp_path / "spec.toml", [], os.fsync

    def spy(fd):
        info = os.fstat(fd)
        synced.append((stat.S_ISDIR(info.st_mode), info.st_ino, path.exists() and path.read_text()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(path, "new\n")
    assert synced[-1] == (True, tmp_path.stat().st_ino, "new\n")


def test_statuses_and_states_are_the_texts_of_the_json_and_the_status_table():
    assert [status.value for status in RunStatus] == ["complete", "diverged", "failed"]
    assert [state.value for state in RunState] == ["complete", "diverged", "failed", "damaged", "pending"]
    assert [state for state in RunState if state.is_done()] == [RunState.COMPLETE, RunState.DIVERGED]
    assert [status.state for status in RunStatus] == [RunState.COMPLETE, RunState.DIVERGED, RunState.FAILED]
    statuses = [RunStatus.of(value) for value in ("failed", "done", None, ["complete"])]
    assert statuses == [RunStatus.FAILED, None, None, None]


def test_a_write_whose_move_fails_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "spec.toml"
    atomic_write_text(path, "old\n")

    def replace_fails(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["spec.toml"]


@pytest.mark.parametrize("failing", ["csv", "json"])
def test_a_run_write_that_fails_half_way_leaves_no_half_file_and_no_done_run(tmp_path, failing):
    store, config = RunStore(tmp_path), CONFIGS[0]
    write(store, config, "failed", epochs=1)
    before = {p: p.read_bytes() for p in (store.csv_path(config.run_id), store.json_path(config.run_id))}
    rows = [dict.fromkeys(CSV_COLUMNS, 0.5) | {"run_id": config.run_id, "epoch": e} for e in (1, 2)]
    result = outcome(config, "complete", rows)
    csv_size, json_size = len(rows_to_csv(rows)), len(json.dumps(result.metadata, indent=2))
    assert csv_size < json_size  # so that a limit between them fails the JSON alone
    with disk_full_after(csv_size // 2 if failing == "csv" else (csv_size + json_size) // 2), pytest.raises(OSError):
        store.write_run(result)
    if failing == "csv":  # the old files stay as they were
        assert {p: p.read_bytes() for p in before} == before
    else:  # the new CSV is whole, the old JSON (which says failed) untouched
        assert store.csv_path(config.run_id).read_text() == rows_to_csv(rows)
        assert store.json_path(config.run_id).read_bytes() == before[store.json_path(config.run_id)]
    assert store.state(config.run_id) == "failed"
    assert sorted(os.listdir(store.runs_dir)) == sorted(p.name for p in before)  # no temporary left


def test_a_runs_points_go_to_their_own_file_before_the_json(tmp_path, monkeypatch):
    store, config = RunStore(tmp_path), dataclasses.replace(CONFIGS[1], evals_per_epoch=2)
    rows = hand_rows(config, [0.5, 0.5])
    points = points_of(config, rows)
    result = outcome(config, "complete", rows, points)
    written = []
    monkeypatch.setattr(store_module, "atomic_write_text",
                        lambda path, text: (written.append(path.name), atomic_write_text(path, text)))  # fmt: skip
    store.write_run(result)
    run_id = config.run_id
    assert written == [f"{run_id}.csv", f"{run_id}.evals.csv", f"{run_id}.json"]  # the JSON, which marks it done, last
    assert store.evals_path(run_id).read_text() == rows_to_csv(points, EVALS_COLUMNS)
    assert store.evals_path(run_id).read_text().splitlines()[1].endswith(",0.25,")  # None: an empty field
    assert json.loads(store.json_path(run_id).read_text()) == result.metadata and store.state(run_id) == "complete"


def test_a_run_that_measures_points_has_a_points_file_even_before_its_first(tmp_path):
    """A run with evals_per_epoch > 1 that failed before its first point (a worker that
    could not set up) gets a header-only points file, as it always had."""
    store, config = RunStore(tmp_path), dataclasses.replace(CONFIGS[1], evals_per_epoch=2)
    store.write_run(outcome(config, "failed", [], error="RuntimeError: no device"))
    assert store.evals_path(config.run_id).read_text() == rows_to_csv([], EVALS_COLUMNS)
    assert store.state(config.run_id) == "failed"


def points_of(config: RunConfig, rows: list[dict], inner: float = 0.25) -> list[dict]:
    """The points file's rows of a run with k = config.evals_per_epoch points an epoch, as
    train writes them: accuracy `inner` (and PreciseBN's `inner` + 0.01 for a BN variant) at
    the first k - 1 points of each epoch, the epoch's CSV row at its k-th."""
    k, steps = config.evals_per_epoch, steps_per_epoch(config.train_size, config.batch_size)
    has_bn = config.variant != "none"
    points = []
    for row in rows:
        for point in range(1, k + 1):
            step = round(point * steps / k)
            acc, precise = (row["test_acc"], row["test_acc_precise_bn"]) if point == k else (inner, inner + 0.01)
            points.append({"run_id": config.run_id, "epoch": row["epoch"], "point": point,
                           "step": (row["epoch"] - 1) * steps + step, "epoch_fraction": row["epoch"] - 1 + step / steps,
                           "test_acc": acc, "test_acc_precise_bn": precise if has_bn else None})  # fmt: skip
    return points


@pytest.mark.parametrize("damage, reason", [
    (lambda path: path.unlink(), "no points file (evals.csv)"),
    (lambda path: path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n"),
     "points file is not this run's"),
])  # fmt: skip
def test_a_run_with_points_is_done_only_with_its_whole_points_file(tmp_path, damage, reason):
    store, config = RunStore(tmp_path), dataclasses.replace(CONFIGS[0], evals_per_epoch=2)
    rows = hand_rows(config, [0.5, 0.5])
    points = points_of(config, rows)
    store.write_run(outcome(config, "complete", rows, points))
    assert store.state(config.run_id) == "complete" and store.run_ids_on_disk() == [config.run_id]
    damage(store.evals_path(config.run_id))
    check = store.check(config.run_id)
    assert check.state == "damaged" and check.reason.startswith(reason)
    assert store.set_aside_unusable({config: (config.run_id, check)}) == [(config.run_id, check.reason)]
    assert not list(store.runs_dir.iterdir())  # CSV, points and JSON all set aside, none deleted
    assert sorted(p.name.removeprefix(config.run_id + ".").split(".", 2)[-1] for p in store.damaged_dir.iterdir()) == (
        ["csv", "json"] if "no points" in reason else ["csv", "evals.csv", "json"])


def test_a_run_without_points_has_no_evals_file(tmp_path):
    store, config = RunStore(tmp_path), CONFIGS[1]
    write(store, config, "complete")
    assert sorted(p.name for p in store.runs_dir.iterdir()) == [f"{config.run_id}.csv", f"{config.run_id}.json"]


@pytest.mark.parametrize("where, problem", [
    ("missing/" + "x" * 300, "cannot use this path (a name of 300 bytes; the file system allows {name_max})"),
    ("x" * 300 + "/runs", "cannot use this path (File name too long)"),
    ("a-file/runs", "cannot create a results folder there ({tmp}/a-file is not a folder)"),
    ("a-file", "cannot create a results folder there (it is not a folder)"),
])  # fmt: skip
def test_check_writable_names_what_would_fail_before_anything_is_written(tmp_path, where, problem):
    (tmp_path / "a-file").write_text("not a folder\n")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UserError) as error:
        check_writable(tmp_path, tmp_path / where)
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    assert str(error.value) == f"{tmp_path / where}: " + problem.format(tmp=tmp_path, name_max=name_max)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder, so os.access says yes")
def test_check_writable_refuses_a_runs_folder_without_write_permission(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir(mode=0o555)
    with pytest.raises(UserError, match="not writable"):
        check_writable(tmp_path, runs)


def test_status_lists_a_few_damaged_runs_at_most(tmp_path):
    store = RunStore(tmp_path)
    configs = [RunConfig(variant="none", lr=1e-3, batch_size=64, epochs=1, seed=s) for s in range(8)]
    for config in configs:
        store.json_path(config.run_id).parent.mkdir(parents=True, exist_ok=True)
        store.json_path(config.run_id).write_text("{")
    lines = format_status(configs, store).splitlines()
    assert lines[4:] == [f"  {c.run_id}: JSON does not parse" for c in configs[:5]] + ["  ... and 3 more"]


@pytest.mark.parametrize("run_id", ["../../elsewhere/EVIL", "", ".hidden", "a/b", "nul\0byte", None])
def test_write_run_writes_only_under_a_plain_run_id(tmp_path, run_id):
    store = RunStore(tmp_path / "study")
    failed = outcome(CONFIGS[0], "failed", [], error="boom")
    with pytest.raises(ValueError, match="not a run id"):
        store.write_run(dataclasses.replace(failed, metadata=failed.metadata | {"run_id": run_id}))
    assert not list(tmp_path.rglob("*"))


def test_a_failed_runs_json_needs_no_csv_but_its_fields(tmp_path):
    store = RunStore(tmp_path)
    write(store, CONFIGS[0], "failed", epochs=1)
    store.csv_path(CONFIGS[0].run_id).unlink()
    assert store.state(CONFIGS[0].run_id) == "failed"
    edit_json(store, CONFIGS[0].run_id, lambda m: m.update(error=5))
    assert store.check(CONFIGS[0].run_id).reason == "JSON error 5 for a failed run"


@pytest.mark.parametrize("row, train_loss, test_loss, state", [
    (2, "nan", "0.6", "diverged"),  # the training loss decides, as train.fit does: it stops the run
    (2, "inf", "nan", "diverged"),
    (2, "0.5", "nan", "damaged"),  # a NaN test loss alone does not stop a run
    (2, "0.5", "0.6", "damaged"),
    (1, "0.5", "nan", "damaged"),  # an epoch before the last one
])  # fmt: skip
def test_a_diverged_run_ends_with_the_epoch_whose_training_loss_is_not_finite(tmp_path, row, train_loss, test_loss,
                                                                              state):  # fmt: skip
    store, config = RunStore(tmp_path), CONFIGS[2]
    rows = hand_rows(config, [0.45, 0.5], nan_from=2)
    store.write_run(outcome(config, "diverged", rows))
    path = store.csv_path(config.run_id)
    lines = path.read_text().splitlines()
    lines = cell(row, "test_loss", test_loss)(cell(row, "train_loss", train_loss)(lines))
    path.write_text("".join(line + "\n" for line in lines))
    assert store.check(config.run_id).state == state


def points_file_edit(column: str, value: str | None = None, row: int = 1):
    """A damage: `value` in `column` of the points file's row `row`; None: the other run's id."""

    def damage(path: Path, other_run_id: str) -> None:
        edit = cell(row, column, other_run_id if value is None else value)
        path.write_text("".join(line + "\n" for line in edit(path.read_text().splitlines())))

    return damage


@pytest.mark.parametrize("damage, reason", [
    (lambda path, other: path.write_bytes(path.with_name(f"{other}.evals.csv").read_bytes()),
     "points file row 1 is not this run's point 1 of epoch 1"),
    (points_file_edit("run_id"), "points file row 1 is not this run's point 1 of epoch 1"),  # nothing else differs
    (points_file_edit("run_id", row=4), "points file row 4 is not this run's point 2 of epoch 2"),
    (points_file_edit("step", "2", row=3), "points file row 3 is not this run's point 1 of epoch 2"),
    (points_file_edit("epoch", "1", row=3), "points file row 3 is not this run's point 1 of epoch 2"),
    (points_file_edit("epoch_fraction", "0.75", row=1), "points file row 1 is not this run's point 1 of epoch 1"),
    (points_file_edit("test_acc", "1.5"), "points file row 1: accuracy '1.5' is out of range"),
    (points_file_edit("test_acc_precise_bn", ""), "points file row 1: accuracy '' is not a number"),
    (points_file_edit("test_acc", "0.3", row=2), "points file's last point of epoch 1 is not its CSV row"),
    (points_file_edit("test_acc_precise_bn", "0.3", row=4), "points file's last point of epoch 2 is not its CSV row"),
])  # fmt: skip
def test_a_points_file_holds_exactly_this_runs_points(tmp_path, damage, reason):
    store = RunStore(tmp_path)
    mine, other = (dataclasses.replace(c, evals_per_epoch=2) for c in CONFIGS[2:])
    for config, acc in ((mine, [0.45, 0.5]), (other, [0.55, 0.6])):
        rows = hand_rows(config, acc)
        store.write_run(outcome(config, "complete", rows, points_of(config, rows)))
    assert store.state(mine.run_id) == "complete"
    damage(store.evals_path(mine.run_id), other.run_id)
    check = store.check(mine.run_id)
    assert (check.state, check.reason) == ("damaged", reason)


# ---------------------------------------------------------------- tampering, at random
# What one tampered cell or field may hold: values no cell of its kind may hold there, and the
# same number written another way. Within their ranges, numbers cannot be told from the truth
# (a time of 3 s instead of 2 s); out of them, or where files must agree, they must be damage.
NEVER = {
    "accuracy": ["", "x", "nan", "inf", "-inf", "-0.25", "1.5", "1e400", "1_0", "0x1"],
    "loss": ["", "x", "-1", "-0.25", "-inf", "nan", "inf", "1e400"],
    "last loss": ["", "x", "-1", "-0.25", "-inf"],  # a diverged run's last epoch: non-finite is allowed
    "time": ["", "x", "nan", "inf", "-inf", "-1", "-0.25", "1e400"],
    "empty": ["0.5", "0", "x", "nan"],  # the BN diagnostics of `none`
    "count": ["", "x", "0", "-1", "99", "1.5"],
    "identity": ["", "x", "999", "bn_before", "none", "sgd", "scratch", "relu"],
}
JSON_NEVER = {
    "run_id": [None, 5, "x"], "study": [None, 5, "other"], "status": [None, 5, "running", "done"],
    "config": [None, [], "x"], "epochs_done": [None, True, 1.0, "2", -1, 3], "error": [5, "boom", []],
    "started": [None, 5, "", "yesterday"], "ended": [None, 5, "", "yesterday"], "device": [None, 5, ""],
    "group_size": [None, 0, True, 1.5, "1"], "torch_version": [None, 5], "bnstudy_version": [None, []],
    "git_commit": [5, []],
}  # fmt: skip


def cell_kind(column: str, text: str) -> str:
    if column in ("train_loss", "test_loss"):
        return "loss" if math.isfinite(float(text)) else "last loss"
    if column.startswith(("train_acc", "test_acc")):
        return "accuracy" if text else "empty"
    if column in ("train_seconds", "eval_seconds", "samples_per_second", "epoch_fraction"):
        return "time"
    return "count" if column in ("epoch", "point", "step") else "identity"


def same_number_written_otherwise(text: str) -> list[str]:
    try:
        value = float(text)
    except ValueError:
        return [text]
    return [f"{value:.17e}", f" {text}", f"{text}0" if "." in text else f"{text}.0"]


def numerically_equal(a, b) -> bool:
    """Whether two cells, JSON values or tables are the same numbers (NaN equal to NaN) and texts."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(numerically_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(numerically_equal(a[k], b[k]) for k in a)
    with contextlib.suppress(TypeError, ValueError):
        x, y = float(a), float(b)
        return x == y or (math.isnan(x) and math.isnan(y))
    return a == b and type(a) is type(b)


def test_tampering_with_one_cell_or_field_is_harmless_or_damage(tmp_path):
    store, rng = RunStore(tmp_path), random.Random(18)
    bn, none = (dataclasses.replace(CONFIGS[i], evals_per_epoch=2) for i in (2, 0))
    diverged = CONFIGS[3]
    for config, status in ((bn, "complete"), (none, "complete"), (diverged, "diverged")):
        rows = hand_rows(config, [0.45, 0.5], nan_from=2 if status == "diverged" else None)
        points = points_of(config, rows) if config.evals_per_epoch > 1 else ()
        store.write_run(outcome(config, status, rows, points))
    originals = {path: path.read_text() for path in store.runs_dir.iterdir()}
    states = {config.run_id: store.state(config.run_id) for config in (bn, none, diverged)}
    outcomes = {"damaged": 0, "harmless": 0}
    for trial in range(600):
        path = rng.choice(sorted(originals))
        run_id = path.name.split(".")[0]
        if path.suffix == ".json":
            record = json.loads(originals[path])
            if rng.random() < 0.3:
                key = rng.choice(sorted(record["config"]))
                record["config"][key] = rng.choice([None, "x", 999, -1, 2.5, True])
            else:
                key = rng.choice(sorted(JSON_NEVER))
                record[key] = rng.choice(JSON_NEVER[key])
            path.write_text(json.dumps(record))
            harmless = numerically_equal(record, json.loads(originals[path]))
        else:
            table = list(csv.reader(originals[path].splitlines()))
            row, column = rng.randrange(1, len(table)), rng.randrange(len(table[0]))
            text, name = table[row][column], table[0][column]
            pool = [CONFIGS[1].run_id, "", "x"] if name == "run_id" else NEVER[cell_kind(name, text)]
            table[row][column] = rng.choice(pool + same_number_written_otherwise(text))
            path.write_text("".join(",".join(line) + "\n" for line in table))
            harmless = numerically_equal(table, list(csv.reader(originals[path].splitlines())))
        check = store.check(run_id)
        assert check.state == "damaged" or (harmless and check.state == states[run_id]), (path.name, trial, check)
        outcomes["harmless" if harmless else "damaged"] += 1
        path.write_text(originals[path])
    assert min(outcomes.values()) > 50, outcomes  # both kinds were tried


def test_a_run_of_another_config_with_the_same_id_is_damaged_to_a_plan_that_expects_the_other(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    monkeypatch.setattr(settings, "RUN_ID_DIGITS", settings.LEGACY_RUN_ID_DIGITS)  # a hash short enough to collide
    first, second = COLLIDING
    assert first.run_id == second.run_id  # a collision of the 6-digit hash (tests/config/test_spec.py)
    write(store, first, "complete", epochs=1)
    assert store.state(first.run_id) == store.state(first) == "complete"
    reason = "JSON is another run's with this id (lr 0.001009, not 0.001442): a collision of its hash"
    assert (store.check(second).state, store.check(second).reason) == ("damaged", reason)
    assert f"  {second.run_id}: {reason}" in format_status([second], store).splitlines()
    assert store.set_aside_unusable(located(store, [first])) == []
    assert store.set_aside_unusable(located(store, [second])) == [(second.run_id, reason)]
    assert store.state(second) == "pending" and len(list(store.damaged_dir.iterdir())) == 2


def write_legacy(store: RunStore, config: RunConfig, status: str, epochs: int = 2) -> None:
    """Write run `config` as bnstudy did before the run_id grew: its legacy_run_id (6 hex
    digits) in every row, in every point and in the JSON, and so in the files' names."""
    def renamed(row: dict) -> dict:
        return {**row, "run_id": config.legacy_run_id}

    rows = hand_rows(config, [0.5] * epochs)
    points = points_of(config, rows) if config.evals_per_epoch > 1 else ()
    error = "RuntimeError: boom" if status == "failed" else None
    old = outcome(config, status, rows, points, error)
    store.write_run(RunOutcome(list(map(renamed, old.rows)), renamed(old.metadata), list(map(renamed, old.points))))


def test_a_run_written_before_the_run_id_grew_is_found_under_its_old_id(tmp_path):
    store = RunStore(tmp_path)
    old, new = dataclasses.replace(CONFIGS[2], evals_per_epoch=2), CONFIGS[3]  # old: with a points file
    write_legacy(store, old, "complete")
    write(store, new, "complete")
    assert [store.run_id_of(c) for c in (old, new)] == [old.legacy_run_id, new.run_id]
    assert store.state(old) == store.state(old.legacy_run_id) == store.state(new) == "complete"
    assert store.check(old).config == old and store.state(old.run_id) == "pending"
    assert format_status([old, new], store).splitlines()[-1].split()[:3] == ["all", "2", "0"]  # and no other runs
    assert store.set_aside_unusable(located(store, [old, new])) == []


def test_an_old_run_that_failed_or_is_damaged_is_redone_under_its_new_id(tmp_path):
    store = RunStore(tmp_path)
    failed, damaged = CONFIGS[:2]
    write_legacy(store, failed, "failed", epochs=1)
    write_legacy(store, damaged, "complete")
    store.csv_path(damaged.legacy_run_id).write_text("run_id\n")
    assert (store.state(failed), store.state(damaged)) == ("failed", "damaged")
    moved = store.set_aside_unusable(located(store, [failed, damaged]))
    old_failed = "failed, under its 6-digit id of bnstudy 0.2 and before; redone under its own"
    assert moved == [(failed.legacy_run_id, old_failed), (damaged.legacy_run_id, "CSV columns are not a run's")]
    assert [store.run_id_of(c) for c in (failed, damaged)] == [failed.run_id, damaged.run_id]
    assert store.state(failed) == store.state(damaged) == "pending"
    write(store, failed, "complete")  # the sweep's rerun, under the new id
    assert store.run_id_of(failed) == failed.run_id and store.state(failed) == "complete"
    # nothing left behind: the old failed run's JSON went aside with the damaged one's files, kept
    assert store.run_ids_on_disk() == [failed.run_id]
    assert "belong to other specs" not in format_status([failed, damaged], store)
    assert sorted(p.name.split(".")[0] for p in store.damaged_dir.iterdir()) == sorted(
        [failed.legacy_run_id] * 2 + [damaged.legacy_run_id] * 2)  # fmt: skip


def test_rows_of_another_id_than_the_old_json_are_damaged(tmp_path):
    store = RunStore(tmp_path)
    config = CONFIGS[2]
    write_legacy(store, config, "complete")
    text = store.csv_path(config.legacy_run_id).read_text()
    store.csv_path(config.legacy_run_id).write_text(text.replace(config.legacy_run_id, config.run_id))
    assert store.check(config).reason == f"CSV row 1 is run {config.run_id}"


def test_an_old_run_that_shares_its_6_digit_id_with_a_planned_one_stays_its_own(tmp_path):
    store = RunStore(tmp_path)
    first, second = COLLIDING
    assert first.legacy_run_id == second.legacy_run_id and first.run_id != second.run_id
    write_legacy(store, first, "complete", epochs=1)  # by bnstudy before the run_id grew
    assert [store.run_id_of(c) for c in COLLIDING] == [first.legacy_run_id, second.run_id]
    assert [store.state(c) for c in COLLIDING] == ["complete", "pending"]
    assert store.set_aside_unusable(located(store, COLLIDING)) == []
    write(store, second, "complete", epochs=1)
    assert [store.check(c).config for c in COLLIDING] == list(COLLIDING)


@pytest.mark.parametrize("existed", [False, True])
def test_a_full_disk_at_the_lock_is_one_line_and_leaves_no_lock(tmp_path, capsys, monkeypatch, existed):
    """ENOSPC writing the sweep's pid into a new .lock: no empty .lock (nor folder) stays."""
    from bnstudy.cli import main
    from studies import tiny_spec

    spec, out = tmp_path / "tiny.toml", tmp_path / "out"
    spec.write_text(tiny_spec("tiny", 'variant = ["none"]\n'))
    if existed:
        out.mkdir()
    real_pwrite = os.pwrite

    def disk_full(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/.lock"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", disk_full)
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "1"]) == 2
    assert capsys.readouterr().err == f"bnstudy: error: {out}: cannot write results (No space left on device)\n"
    assert (sorted(out.iterdir()) == []) if existed else not out.exists()
