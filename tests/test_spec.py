"""Study specs: parsing, --set overrides, grid expansion, stable ids, the spec as run, and
one clear error line for each kind of bad spec."""

import os
from pathlib import Path

import pytest

from bnstudy.cli import main
from bnstudy.errors import UserError
from bnstudy.spec import RunConfig, load_study

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

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
    assert {p.stem for p in specs} >= {"default", "quick", "seed", "full", "momentum", "activation"}
    for path in specs:
        study = load_study(path)
        assert study.name == path.stem
        # every study compares all three variants, but the one about BatchNorm's own momentum
        expected = {"bn_before", "bn_after"} if path.stem == "momentum" else {"none", "bn_before", "bn_after"}
        assert {r.variant for r in study.runs()} == expected


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
def test_a_spec_whose_runs_share_a_run_id_is_refused(tmp_path, capsys, command):
    spec, out = tmp_path / "collide.toml", tmp_path / "out"
    spec.write_text(COLLIDING)
    first, second = (RunConfig(variant="none", lr=lr, batch_size=128, limit_train=512, limit_test=256,
                               precise_bn_samples=256, seed=29, epochs=1) for lr in (0.001009, 0.001442))  # fmt: skip
    assert first.run_id == second.run_id  # the collision this test is about
    assert main([command[0], str(spec), "--out", str(out), *command[1:]]) == 2
    assert capsys.readouterr().err == (
        f"bnstudy: error: {spec}: grid: two runs share the run id {first.run_id} (lr 0.001009 and lr 0.001442), "
        "a collision of its 6-digit hash; change one of their values slightly\n")
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


@pytest.mark.parametrize("command", [["sweep"], ["sweep", "--dry-run"], ["status"]])
def test_a_grid_over_the_limit_is_refused_before_it_is_expanded(tmp_path, small, capsys, monkeypatch, command):
    # four axes of 100 values, 4 x 10^8 runs: planning took 92 s and 1 GB per 10^6 runs (here a MemoryError)
    from bnstudy import spec

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
