"""The results store: what counts as done, atomic files, the spec as run, stale temporary
files, the study lock and the status table."""

import contextlib
import dataclasses
import errno
import json
import os
import resource
import signal
import stat

import pytest

from bnstudy.errors import UserError
from bnstudy.spec import RunConfig
from bnstudy.runner import run_metadata
from bnstudy import store as store_module
from bnstudy.store import EVALS_FIELD, RunStore, atomic_write_text, check_writable, format_status, rows_to_csv
from bnstudy.settings import CSV_COLUMNS, EVALS_COLUMNS

CONFIGS = [RunConfig(variant=v, lr=1e-3, batch_size=64, epochs=2, seed=s) for v in ("none", "bn_after") for s in (0, 1)]


def write(store: RunStore, config: RunConfig, status: str, epochs: int = 2) -> None:
    rows = [dict.fromkeys(CSV_COLUMNS, 0.5) | {"run_id": config.run_id, "epoch": e} for e in range(1, epochs + 1)]
    store.write_run(rows, run_metadata(config, status, "cpu", "start", "end", epochs_done=epochs))


def test_done_means_a_complete_or_diverged_json_beside_a_csv(tmp_path):
    store = RunStore(tmp_path)
    complete, diverged, failed, pending = CONFIGS
    write(store, complete, "complete")
    write(store, diverged, "diverged", epochs=1)
    write(store, failed, "failed", epochs=1)
    assert [store.state(c.run_id) for c in CONFIGS] == ["complete", "diverged", "failed", "pending"]
    assert [store.is_done(c.run_id) for c in CONFIGS] == [True, True, False, False]
    assert store.recorded_run_ids() == {complete.run_id, diverged.run_id, failed.run_id}


def test_partial_files_do_not_count_as_done(tmp_path):
    store = RunStore(tmp_path)
    truncated, csv_only, json_only = CONFIGS[:3]
    write(store, truncated, "complete")
    text = store.json_path(truncated.run_id).read_text()
    store.json_path(truncated.run_id).write_text(text[: len(text) // 2])
    write(store, csv_only, "complete")
    store.json_path(csv_only.run_id).unlink()
    write(store, json_only, "complete")
    store.csv_path(json_only.run_id).unlink()
    assert [store.state(c.run_id) for c in (truncated, csv_only, json_only)] == ["pending"] * 3


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


def test_status_table_counts_states_per_variant(tmp_path):
    store = RunStore(tmp_path)
    write(store, CONFIGS[0], "complete")
    write(store, CONFIGS[2], "failed", epochs=1)
    write(store, RunConfig(variant="none", lr=0.5, batch_size=8, epochs=1), "complete")  # another spec's run
    lines = format_status(CONFIGS, store).splitlines()
    assert lines[0].split() == ["variant", "done", "diverged", "failed", "pending", "total"]
    assert [line.split() for line in lines[1:4]] == [
        ["none", "1", "0", "0", "1", "2"],
        ["bn_after", "0", "0", "1", "1", "2"],
        ["all", "1", "0", "1", "2", "4"],
    ]
    assert "1 more runs" in lines[4]


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
    metadata = run_metadata(config, "complete", "cpu", "start", "end", epochs_done=2)
    csv_size, json_size = len(rows_to_csv(rows)), len(json.dumps(metadata, indent=2))
    assert csv_size < json_size  # so that a limit between them fails the JSON alone
    with disk_full_after(csv_size // 2 if failing == "csv" else (csv_size + json_size) // 2), pytest.raises(OSError):
        store.write_run(rows, metadata)
    if failing == "csv":  # the old files stay as they were
        assert {p: p.read_bytes() for p in before} == before
    else:  # the new CSV is whole, the old JSON (which says failed) untouched
        assert store.csv_path(config.run_id).read_text() == rows_to_csv(rows)
        assert store.json_path(config.run_id).read_bytes() == before[store.json_path(config.run_id)]
    assert store.state(config.run_id) == "failed"
    assert sorted(os.listdir(store.runs_dir)) == sorted(p.name for p in before)  # no temporary left


def test_a_runs_points_go_to_their_own_file_before_the_json_and_stay_out_of_it(tmp_path, monkeypatch):
    store, config = RunStore(tmp_path), dataclasses.replace(CONFIGS[1], evals_per_epoch=2)
    rows = [dict.fromkeys(CSV_COLUMNS, 0.5) | {"run_id": config.run_id, "epoch": 1}]
    points = [dict.fromkeys(EVALS_COLUMNS, 0.5) | {"run_id": config.run_id, "point": p, "test_acc_precise_bn": None}
              for p in (1, 2)]  # fmt: skip
    metadata = run_metadata(config, "complete", "cpu", "start", "end", epochs_done=1, points=points)
    written = []
    monkeypatch.setattr(store_module, "atomic_write_text",
                        lambda path, text: (written.append(path.name), atomic_write_text(path, text)))  # fmt: skip
    store.write_run(rows, metadata)
    run_id = config.run_id
    assert written == [f"{run_id}.csv", f"{run_id}.evals.csv", f"{run_id}.json"]  # the JSON, which marks it done, last
    assert store.evals_path(run_id).read_text() == rows_to_csv(points, EVALS_COLUMNS)
    assert store.evals_path(run_id).read_text().splitlines()[1].endswith(",0.5,")  # None: an empty field
    recorded = json.loads(store.json_path(run_id).read_text())
    assert EVALS_FIELD not in recorded and recorded == {k: v for k, v in metadata.items() if k != EVALS_FIELD}
    assert metadata[EVALS_FIELD] == points and store.state(run_id) == "complete"  # the caller's dict is untouched


def test_a_run_without_points_has_no_evals_file(tmp_path):
    store, config = RunStore(tmp_path), CONFIGS[1]
    assert EVALS_FIELD not in run_metadata(config, "complete", "cpu", "start", "end", points=[{"never": "used"}])
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
