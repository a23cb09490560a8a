"""Study specs: parsing, --set overrides, grid expansion, stable ids, the spec as run, and
one clear error line for each kind of bad spec."""

import os
from pathlib import Path

import pytest

from bnstudy.config import settings
from bnstudy.cli import main
from bnstudy.errors import UserError
from bnstudy.config.spec import RunConfig, load_study

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"

SMALL = """
name = "small"
epochs = 2
limit_train = 1000
[grid]
variant = ["none", "bn_before"]
lr = [1e-3, 1e-2]
batch_size = [64]
seed = [0, 1, 2]
"""


@pytest.fixture
def small(tmp_path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return path


def axis(study, key):
    return dict(study.axes).get(key, ())


def test_expands_the_product_in_spec_order_with_fixed_settings(small):
    runs = load_study(small).runs()
    assert len(runs) == 2 * 2 * 3
    assert [(r.variant, r.lr, r.seed) for r in runs[:4]] == [("none", 1e-3, 0), ("none", 1e-3, 1), ("none", 1e-3, 2),
                                                              ("none", 1e-2, 0)]  # fmt: skip
    assert {(r.epochs, r.limit_train, r.batch_size, r.study) for r in runs} == {(2, 1000, 64, "small")}
    assert len({r.run_id for r in runs}) == len(runs)


def test_run_ids_are_stable_and_integer_lr_is_a_float(tmp_path, small):
    ids = [r.run_id for r in load_study(small).runs()]
    assert ids == [r.run_id for r in load_study(small).runs()]
    assert ids[0] == RunConfig(variant="none", lr=1e-3, batch_size=64, epochs=2, limit_train=1000).run_id
    as_int = tmp_path / "int.toml"
    as_int.write_text('variant = "none"\nlr = 1\nbatch_size = 8\nepochs = 1\n')
    as_float = tmp_path / "float.toml"
    as_float.write_text('variant = "none"\nlr = 1.0\nbatch_size = 8\nepochs = 1\n')
    assert load_study(as_int).runs()[0].run_id == load_study(as_float).runs()[0].run_id


def test_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "my-study.toml"
    path.write_text('variant = "none"\nlr = 1e-3\nbatch_size = 8\nepochs = 1\n')
    study = load_study(path)
    assert study.name == "my-study" and len(study.runs()) == 1


def test_set_overrides_values_and_moves_settings_between_top_level_and_grid(small):
    study = load_study(small, ["epochs=3", "grid.seed=[0]", "lr=0.1", "grid.limit_train=[500, 800]", "variant=none"])
    runs = study.runs()
    assert {r.epochs for r in runs} == {3} and {r.seed for r in runs} == {0} and {r.variant for r in runs} == {"none"}
    assert {r.lr for r in runs} == {0.1} and axis(study, "lr") == ()
    assert axis(study, "limit_train") == (500, 800) and "limit_train" not in dict(study.fixed)


def test_the_spec_as_run_reads_back_into_the_same_runs(tmp_path, small):
    study = load_study(small, ["epochs=3", "grid.seed=[4, 5]", 'name="renamed"', "device=cpu"])
    copy = tmp_path / "copy.toml"
    copy.write_text(study.to_toml())
    again = load_study(copy)
    assert [r.run_id for r in again.runs()] == [r.run_id for r in study.runs()]
    assert (again.name, again.device, again.fixed, again.axes) == ("renamed", "cpu", study.fixed, study.axes)
    assert "--set epochs=3" in study.to_toml().splitlines()[0]


def test_shipped_specs_are_valid_and_named_after_their_files():
    specs = sorted(EXPERIMENTS.glob("*.toml"))
    assert {p.stem for p in specs} >= {"default", "quick", "seed", "full", "momentum", "activation", "remedies",
                                       "remedies_quick"}  # fmt: skip
    for path in specs:
        study = load_study(path)
        assert study.name == path.stem
        # every study compares all three variants, but the one about BatchNorm's own momentum and
        # the remedies studies, which compare remedies of the notebook's bn_before with none
        expected = {"none", "bn_before", "bn_after"}
        if path.stem == "momentum":
            expected = {"bn_before", "bn_after"}
        elif path.stem.startswith("remedies"):
            expected = {"none", "bn_before"}
        assert {r.variant for r in study.runs()} == expected


@pytest.mark.parametrize("name", ["remedies", "remedies_quick"])
def test_the_remedies_studies_hold_every_arm_at_the_notebooks_setting(name):
    """none; bn_before with each norm, momentum 0.3, ghost batches of 32, the last 2 epochs
    frozen; max and avg pooling for none and bn_before: 10 runs a seed, every one paired by
    seed with the notebook's bn_before run (a paired comparison of one setting each)."""
    runs = load_study(EXPERIMENTS / f"{name}.toml").runs()
    seeds = sorted({r.seed for r in runs})
    assert {(r.optimizer, r.lr, r.batch_size, r.activation, r.evals_per_epoch) for r in runs} == {
        ("adam", 1e-3, 256, "sigmoid", 4)}
    arms = {(r.variant, r.norm, r.bn_momentum, r.ghost_batch_size, r.frozen_bn_epochs, r.pool) for r in runs}
    assert arms == {
        ("none", "batch", 0.1, 0, 0, "max"), ("none", "batch", 0.1, 0, 0, "avg"),
        ("bn_before", "batch", 0.1, 0, 0, "max"), ("bn_before", "batch", 0.1, 0, 0, "avg"),
        ("bn_before", "batchrenorm", 0.1, 0, 0, "max"), ("bn_before", "group", 0.1, 0, 0, "max"),
        ("bn_before", "layer", 0.1, 0, 0, "max"), ("bn_before", "batch", 0.3, 0, 0, "max"),
        ("bn_before", "batch", 0.1, 32, 0, "max"), ("bn_before", "batch", 0.1, 0, 2, "max"),
    }  # fmt: skip
    assert len(runs) == len(arms) * len(seeds) and len({r.run_id for r in runs}) == len(runs)
    if name == "remedies":
        assert len(seeds) >= 10  # pairs enough for an exact test to survive Holm over ~15 claims


def test_default_spans_the_asked_ranges():
    study = load_study(EXPERIMENTS / "default.toml")
    runs = study.runs()
    batch_sizes, lrs = {r.batch_size for r in runs}, {r.lr for r in runs}
    assert min(batch_sizes) <= 32 and max(batch_sizes) >= 1024
    assert min(lrs) <= 1e-4 and max(lrs) >= 1e-2 and {r.optimizer for r in runs} == {"adam"}
    assert len({r.seed for r in runs}) >= 3 and {r.epochs for r in runs} <= set(range(5, 11))


def test_the_axis_studies_vary_what_they_study():
    momentum = load_study(EXPERIMENTS / "momentum.toml")
    assert set(axis(momentum, "variant")) == {"bn_before", "bn_after"} and len(axis(momentum, "bn_momentum")) >= 3
    assert 0.1 in axis(momentum, "bn_momentum") and len(axis(momentum, "seed")) >= 3
    activation = load_study(EXPERIMENTS / "activation.toml")
    assert set(axis(activation, "activation")) == {"sigmoid", "relu", "tanh"} and len(axis(activation, "variant")) == 3
    assert dict(activation.fixed)["batch_size"] == 256


def test_seed_spec_is_the_notebook_setting():
    runs = load_study(EXPERIMENTS / "seed.toml").runs()
    notebook = [r for r in runs if r.variant == "bn_before"]
    assert {(r.optimizer, r.lr, r.batch_size, r.epochs, r.limit_train) for r in runs} == {("adam", 1e-3, 256, 5, None)}
    assert len({r.seed for r in notebook}) >= 3


def test_full_spec_has_both_optimizers():
    assert {r.optimizer for r in load_study(EXPERIMENTS / "full.toml").runs()} == {"adam", "sgd"}


BAD = [  # (spec text or None for SMALL, --set items, the key the error names, words of the problem)
    ('variant = "none"\nlr = 1e-3\nbatch_size = 8\nepochs = 1\nepoch = 2\n', [], "epoch", "unknown key"),
    (None, ["grid.sed=[0]"], "grid.sed", "unknown setting"),
    ('variant = "none"\nlr = 1e-3\nbatch_size = "8"\nepochs = 1\n', [], "batch_size", "must be an integer"),
    (None, ["grid.lr=[0.1, true]"], "grid.lr", "must be a number"),
    (None, ["grid.seed=[]"], "grid.seed", "empty axis"),
    (None, ["grid.variant=['none', 'bn_middle']"], "grid.variant", "unknown value 'bn_middle'"),
    (None, ["optimizer='rmsprop'"], "optimizer", "unknown value 'rmsprop'"),
    (None, ["grid.lr=[1e-3, 0]"], "grid.lr", "must be > 0"),
    (None, ["lr=-1"], "lr", "must be > 0"),
    (None, ["grid.batch_size=[64, 2000]"], "grid.batch_size", "between"),
    (None, ["grid.batch_size=[1]"], "grid.batch_size", "between 2"),
    (None, ["grid.seed=[0, 1, 0]"], "grid.seed", "duplicate value 0"),
    (None, ["grid.lr=[1e-3, 0.001]"], "grid.lr", "duplicate value"),
    (None, ["epochs=[1, 2]"], "epochs", "make it a [grid] axis"),
    (None, ["grid.epochs=3"], "grid.epochs", "must be a list"),
    (None, ["epoch=2"], "epoch", "unknown key"),
    (None, ["grid.device=['cpu']"], "grid.device", "cannot be an axis"),
    (None, ["device=tpu"], "device", "unknown device"),
    (None, ["name=../up"], "name", "folder name"),
    (None, ["grid.variant=[none]"], "grid.variant", "not a TOML value"),
    ('lr = 1e-3\nbatch_size = 8\nepochs = 1\n', [], "variant", "missing"),
    ('variant = "none"\nlr = 1e-3\nbatch_size = 8\nepochs = 1\n[grid]\nlr = [0.1]\n', [], "lr", "set both"),
    ('grid = 3\n', [], "grid", "must be a table"),
    # the axes added after 0.1: activation and bn_momentum
    (None, ["grid.activation=['relu', 'gelu']"], "grid.activation", "unknown value 'gelu'"),
    (None, ["activation=swish"], "activation", "unknown value 'swish'; expected one of sigmoid, relu, tanh"),
    (None, ["bn_momentum=0"], "bn_momentum", "must be > 0 and <= 1"),
    (None, ["grid.bn_momentum=[0.1, -0.1]"], "grid.bn_momentum", "must be > 0 and <= 1"),
    (None, ["bn_momentum=1.5"], "bn_momentum", "must be > 0 and <= 1 (got 1.5)"),
    (None, ["bn_momentum=nan"], "bn_momentum", "must be a finite number"),
    (None, ["bn_momentum='0.1'"], "bn_momentum", "must be a number"),
    ('variant = "none"\nlr = 1e-3\nbatch_size = 8\nepochs = 1\nactivation = "relu"\n[grid]\nactivation = ["tanh"]\n',
     [], "activation", "set both"),
    ('variant = "bn_before"\nlr = 1e-3\nbatch_size = 8\nepochs = 1\nbn_momentum = 0.1\n[grid]\n'
     'bn_momentum = [0.3]\n', [], "bn_momentum", "set both"),
    (None, ["limit_test=1"], "limit_test", "BatchNorm"),
    (None, [f"seed={2**32}"], "seed", "between 0 and 4294967295"),
    (None, ["name=" + "x" * 101], "name", "at most 100"),
    # every integer setting is bounded (issue 18): no setting reaches training with an absurd value
    (None, ["epochs=1" + "0" * 400], "epochs", "must be between 1 and 10000"),
    (None, ["epochs=1" + "0" * 5000], "epochs", "not a TOML value"),  # past Python's 4,300 digits
    (None, [f"precise_bn_samples={2**64}"], "precise_bn_samples", "must be between 2 and 60000"),
    ('variant = "none"\nlr = 1e-3\nbatch_size = 8\nepochs = 1' + "0" * 5000 + "\n", [], "", "not valid TOML"),
    (None, ["lr=1e-320"], "lr", "must be >= 1e-12"),  # a subnormal lr prints as 9.99989e-321
    (None, ["bn_momentum=1e-300"], "bn_momentum", "must be >= 1e-12"),
]


@pytest.mark.parametrize("text, overrides, key, problem", BAD)
def test_bad_specs_name_the_file_and_key(tmp_path, small, text, overrides, key, problem):
    path = small if text is None else tmp_path / "bad.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as error:
        load_study(path, overrides)
    assert str(error.value).startswith(f"{path}: {key}: " if key else f"{path}: ")
    assert problem in str(error.value)
    if overrides:
        assert f"(from --set {overrides[0]})" in str(error.value)


def test_unreadable_specs(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n[grid\n")
    with pytest.raises(UserError, match=r"broken\.toml: not valid TOML"):
        load_study(broken)
    with pytest.raises(UserError, match=r"missing\.toml: cannot read the spec \(No such file"):
        load_study(tmp_path / "missing.toml")
    with pytest.raises(UserError, match=r"--set epochs: expected KEY=VALUE"):
        load_study(EXPERIMENTS / "quick.toml", ["epochs"])


@pytest.mark.parametrize("command", ["sweep", "status"])
def test_cli_reports_a_bad_spec_in_one_line_and_writes_nothing(tmp_path, small, capsys, command):
    out = tmp_path / "out"
    argv = [command, str(small), "--out", str(out), "--set", "grid.seed=[]"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"bnstudy: error: {small}: grid.seed: empty axis; give at least one value (from --set grid.seed=[])\n"
    assert not out.exists()


# Two learning rates whose runs' 24-bit hashes collide (found by search): the same run id twice.
COLLIDING = """
name = "collide"
variant = "none"
batch_size = 128
limit_train = 512
limit_test = 256
precise_bn_samples = 256
seed = 29
epochs = 1
[grid]
lr = [0.001009, 0.001442]
"""


@pytest.mark.parametrize("command", [["sweep"], ["sweep", "--dry-run"], ["status"]])
def test_a_spec_whose_runs_share_a_run_id_is_refused(tmp_path, capsys, monkeypatch, command):
    spec, out = tmp_path / "collide.toml", tmp_path / "out"
    spec.write_text(COLLIDING)
    monkeypatch.setattr(settings, "RUN_ID_DIGITS", settings.LEGACY_RUN_ID_DIGITS)  # a hash short enough to collide
    first, second = (RunConfig(variant="none", lr=lr, batch_size=128, limit_train=512, limit_test=256,
                               precise_bn_samples=256, seed=29, epochs=1) for lr in (0.001009, 0.001442))  # fmt: skip
    assert first.run_id == second.run_id  # the collision this test is about
    assert main([command[0], str(spec), "--out", str(out), *command[1:]]) == 2
    assert capsys.readouterr().err == (
        f"bnstudy: error: {spec}: grid: two runs share the run id {first.run_id} (lr 0.001009 and lr 0.001442), "
        "a collision of its hash; change one of their values slightly\n")
    assert not out.exists()


def test_a_spec_that_is_no_small_regular_file_is_refused_before_it_is_read(tmp_path, capsys):
    fifo, huge, deep = tmp_path / "fifo.toml", tmp_path / "huge.toml", tmp_path / "deep.toml"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    huge.write_text("# " + "x" * (1 << 20) + "\n")
    deep.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    expected = {fifo: f"{fifo}: not a regular file; a spec is a TOML file",
                tmp_path: f"{tmp_path}: not a regular file; a spec is a TOML file",
                huge: f"{huge}: {huge.stat().st_size:,} bytes; a spec is a small TOML file (at most 1 MB)",
                deep: f"{deep}: not valid TOML (RecursionError: nested too deeply)"}  # fmt: skip
    for path, message in expected.items():
        assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
        assert capsys.readouterr().err == f"bnstudy: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_a_sparse_spec_larger_than_memory_is_refused_without_reading_it(tmp_path):
    # README: over 1 MB is refused before reading: a sparse 64 GiB file (no disk used), more
    # than this machine's memory, that a whole read would first have to allocate, and fail on
    size, sparse = 1 << 36, tmp_path / "sparse.toml"
    try:
        with open(sparse, "wb") as f:
            f.truncate(size)
    except OSError as exc:  # a file system without sparse files this large
        pytest.skip(f"cannot make a sparse {size:,}-byte file here: {exc}")
    with pytest.raises(UserError, match=rf"{size:,} bytes; a spec is a small TOML file \(at most 1 MB\)"):
        load_study(sparse)


@pytest.mark.parametrize("item", ["name=a\x1bb", "epochs=2\n", "grid.seed=[0,\r1]", "na\x00me=x", "lr=1e-3\u2028"])
def test_a_control_character_in_a_set_item_is_refused(small, capsys, item):
    assert main(["sweep", str(small), "--dry-run", "--set", item]) == 2
    err = capsys.readouterr().err
    shown = item.encode("ascii", "backslashreplace").decode().replace("\n", "\\n").replace("\r", "\\r")
    shown = shown.replace("\x00", "\\x00").replace("\x1b", "\\x1b")
    assert err == (f"bnstudy: error: {small}: --set {shown}: a control character; --set takes printable text\n")


def test_the_spec_as_run_escapes_control_characters_in_where_it_came_from(tmp_path):
    folder = tmp_path / "a\x1bb\nc"
    folder.mkdir()
    spec = folder / "small.toml"
    spec.write_text(SMALL)
    study = load_study(spec, ["epochs=1"])
    copy = tmp_path / "copy.toml"
    copy.write_text(study.to_toml())
    assert load_study(copy).runs() == study.runs()
    assert "a\\x1bb\\nc" in copy.read_text().splitlines()[0]


# ---------------------------------------------------------------- arms ([[grid]] tables)
ARMS = """
name = "arms"
epochs = 1
lr = 1e-3
batch_size = 64
limit_train = 256
limit_test = 200
precise_bn_samples = 64
[[grid]]
variant = ["none", "bn_before"]
pool = ["max", "avg"]
seed = [0, 1]
[[grid]]
variant = ["bn_before"]
norm = ["batch", "group"]
seed = [0, 1]
"""


@pytest.fixture
def arms(tmp_path) -> Path:
    path = tmp_path / "arms.toml"
    path.write_text(ARMS)
    return path


def test_a_study_of_arms_is_the_union_of_their_runs_each_once(arms):
    study = load_study(arms)
    runs = study.runs()
    assert len(study.arms) == 2 and [len(study.arm_runs(arm)) for arm in study.arms] == [8, 4]
    # bn_before with norm batch is the first arm's bn_before with max pooling: counted once, where it first appears
    assert len(runs) == 10 and len({r.run_id for r in runs}) == 10
    assert [(r.variant, r.pool, r.norm, r.seed) for r in runs[-2:]] == [("bn_before", "max", "group", 0),
                                                                        ("bn_before", "max", "group", 1)]  # fmt: skip
    assert {(r.epochs, r.batch_size, r.study) for r in runs} == {(1, 64, "arms")}
    with pytest.raises(ValueError, match="2 arms"):
        study.axes  # noqa: B018


def test_a_spec_of_arms_reads_back_from_the_spec_as_run_and_set_reaches_every_arm(tmp_path, arms):
    study = load_study(arms, ["grid.seed=[3]", "epochs=2"])
    assert {r.seed for r in study.runs()} == {3} and len(study.runs()) == 5
    copy = tmp_path / "copy.toml"
    copy.write_text(study.to_toml())
    assert copy.read_text().count("[[grid]]") == 2
    again = load_study(copy)
    assert again.runs() == study.runs() and again.arms == study.arms and again.fixed == study.fixed
    moved = load_study(arms, ["seed=1"])  # a top-level value takes the axis out of every arm
    assert all("seed" not in dict(arm) for arm in moved.arms) and {r.seed for r in moved.runs()} == {1}


def test_a_grid_crossing_none_with_settings_it_ignores_makes_one_none_run_with_its_old_id(tmp_path):
    path = tmp_path / "crossed.toml"
    path.write_text('epochs = 3\nlr = 1e-3\nbatch_size = 64\n[grid]\nvariant = ["none", "bn_before"]\n'
                    'bn_momentum = [0.1, 0.3]\nnorm = ["batch", "group"]\nghost_batch_size = [0, 32]\n'
                    'frozen_bn_epochs = [0, 1]\n')  # fmt: skip
    runs = load_study(path).runs()
    nones = [r for r in runs if r.variant == "none"]
    assert len(nones) == 1
    assert nones[0].run_id == RunConfig(variant="none", lr=1e-3, batch_size=64, epochs=3).run_id
    # bn_before: batch x 2 momenta x 2 ghost sizes x 2 frozen; group ignores all three: 1
    assert len(runs) == 1 + 8 + 1
    group = [r for r in runs if r.norm == "group"]
    assert [(r.bn_momentum, r.ghost_batch_size, r.frozen_bn_epochs) for r in group] == [(0.1, 0, 0)]


ARM_BAD = [  # (spec text, --set items, the key the error names, words of the problem)
    ('epochs = 1\nlr = 1e-3\nbatch_size = 8\ngrid = [1, 2]\n', [], "grid", "must be a table"),
    (ARMS + '[[grid]]\nvariant = ["none"]\nsed = [0]\n', [], "grid.sed", "unknown setting"),
    (ARMS.replace('variant = ["bn_before"]\n', ""), [], "variant", "missing; set it at the top level or make it a "
                                                                       "[grid] axis (in [[grid]] table 2)"),
    (ARMS, ["grid.variant=['none']"], "grid.norm", "'group' applies to none of the runs (in [[grid]] table 2): "
                                                   "variant none has no normalization layer"),
    (ARMS, ["grid.norm=['batch', 'bogus']"], "grid.norm", "unknown value 'bogus'"),
    (ARMS, ["batch_size=64", "grid.ghost_batch_size=[48]"], "grid.ghost_batch_size",
     "must divide the batch size 64 (got 48) (in [[grid]] table 1)"),
    ('variant = "none"\nlr = 1e-3\nbatch_size = 8\nepochs = 1\nnorm = "layer"\n', [], "norm",
     "'layer' applies to none of the runs: variant none has no normalization layer"),
    (ARMS, ["frozen_bn_epochs=1"], "frozen_bn_epochs", "must be less than the 1 epochs"),
    (ARMS, ["ghost_batch_size=1"], "ghost_batch_size", "must be 0 (off) or at least 2"),
]  # fmt: skip


@pytest.mark.parametrize("text, overrides, key, problem", ARM_BAD)
def test_bad_arms_and_settings_that_apply_to_no_run_name_the_file_and_key(tmp_path, text, overrides, key, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        load_study(path, overrides)
    assert str(error.value).startswith(f"{path}: {key}: "), str(error.value)
    assert problem in str(error.value)


def test_a_spec_of_arms_dry_runs_sweeps_resumes_and_reports_its_status(tmp_path, arms, monkeypatch, capsys):
    import torch

    from bnstudy.engine import runner
    from bnstudy.results.store import RunStore

    out, runs = tmp_path / "out", load_study(arms).runs()
    threads, real_fit, trained, failing = torch.get_num_threads(), runner.fit, [], [True]
    monkeypatch.setattr(runner, "fit", lambda *args, **kwargs: pytest.fail("a dry run trained"))
    assert main(["sweep", str(arms), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines[:10]] == [["pending", c.run_id] for c in runs]
    assert "10 runs, 10 to run" in lines[10] and not out.exists()

    def fit_failing_group_seed_1(config, data, **kwargs):
        trained.append(config.run_id)
        if (config.norm, config.seed) == ("group", 1) and failing:
            raise RuntimeError("injected failure")
        return real_fit(config, data, **kwargs)

    monkeypatch.setattr(runner, "fit", fit_failing_group_seed_1)
    try:
        assert main(["sweep", str(arms), "--out", str(out), "--jobs", "1"]) == 1
        assert sorted(trained) == sorted(c.run_id for c in runs)  # each run once, duplicates of two arms too
        assert "9 complete, 0 diverged, 1 failed" in capsys.readouterr().out
        assert main(["status", str(out)]) == 0
        table = [line.split() for line in capsys.readouterr().out.splitlines()[-3:]]
        assert table == [["none", "4", "0", "0", "0", "0", "4"], ["bn_before", "5", "0", "1", "0", "0", "6"],
                         ["all", "9", "0", "1", "0", "0", "10"]]  # fmt: skip
        # the run without running statistics is done, not damaged, with its BN columns empty
        store = RunStore(out)
        group = next(c for c in runs if (c.norm, c.seed) == ("group", 0))
        assert store.state(group.run_id) == "complete"
        row = store.csv_path(group.run_id).read_text().splitlines()
        assert row[0].split(",").count("norm") == 1 and ",group," in row[1]
        trained.clear(), failing.clear()
        assert main(["sweep", str(arms), "--out", str(out), "--jobs", "1"]) == 0
        assert trained == [next(c.run_id for c in runs if (c.norm, c.seed) == ("group", 1))]
        assert "1 run in" in capsys.readouterr().out
        assert [store.state(c.run_id) for c in runs] == ["complete"] * 10
    finally:
        torch.set_num_threads(threads)

@pytest.mark.parametrize("command", [["sweep"], ["sweep", "--dry-run"], ["status"]])
def test_a_grid_over_the_limit_is_refused_before_it_is_expanded(tmp_path, small, capsys, monkeypatch, command):
    # four axes of 100 values, 4 x 10^8 runs: planning took 92 s and 1 GB per 10^6 runs (here a MemoryError)
    from bnstudy.config import spec

    monkeypatch.setattr(spec, "RunConfig", lambda **settings: pytest.fail("the grid was expanded"))
    out, values = tmp_path / "out", list(range(100))
    sets = [f"grid.seed={values}", f"grid.limit_test={[v + 2 for v in values]}",
            f"grid.epochs={[v + 1 for v in values]}", f"grid.precise_bn_samples={[v + 2 for v in values]}"]
    argv = [command[0], str(small), "--out", str(out), *command[1:], *(arg for item in sets for arg in ("--set", item))]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"bnstudy: error: {small}: grid: 400,000,000 runs (variant 2 × lr 2 × batch_size 1 × seed 100 × limit_test 100 "
        "× epochs 100 × precise_bn_samples 100); a study holds at most 100,000: shrink an axis or split the study\n")
    assert not out.exists()


def test_one_long_axis_is_refused_at_once(tmp_path):
    # 120,000 seeds fit in a 1 MB spec; checking them for duplicates pairwise took minutes
    path, head = tmp_path / "long.toml", 'variant = "none"\nepochs = 1\nlr = 1e-3\nbatch_size = 64\n[grid]\n'
    path.write_text(f"{head}seed = {list(range(120_000))}\n")
    with pytest.raises(UserError, match=r"grid: 120,000 runs \(seed 120,000\); a study holds at most 100,000"):
        load_study(path)
    path.write_text(f"{head}seed = {[*range(90_000), 7]}\n")
    with pytest.raises(UserError, match=r"grid.seed: duplicate value 7"):
        load_study(path)
