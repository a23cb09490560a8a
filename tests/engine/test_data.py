"""Finding, decoding and verifying Fashion-MNIST; the seeded batch iterator."""

from __future__ import annotations

import gzip
import shutil
import urllib.error
import urllib.request

import pytest
import torch

from bnstudy.engine import data as data_module
from bnstudy.engine.data import FILES, epoch_batches, find_data_dir, fixed_batches, load_fashion_mnist
from bnstudy.errors import UserError


@pytest.fixture
def data_copy(tmp_path):
    """A writable copy of the real dataset's four .gz files."""
    source = find_data_dir()
    target = tmp_path / "fmnist"
    target.mkdir()
    for base in FILES.values():
        name = base + ".gz" if (source / (base + ".gz")).exists() else base
        shutil.copy(source / name, target / name)
    return target


def test_full_dataset_has_the_published_shape_and_balance():
    data = load_fashion_mnist()
    assert data.train_x.shape == (60_000, 1, 28, 28) and data.test_x.shape == (10_000, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0
    assert torch.bincount(data.train_y).tolist() == [6_000] * 10
    assert torch.bincount(data.test_y).tolist() == [1_000] * 10
    # The pixel mean the dataset's authors publish, to three decimals: the bytes decode as intended.
    assert data.train_x.mean().item() == pytest.approx(0.2860, abs=5e-4)


def test_limits_keep_the_first_images(small_data):
    full = load_fashion_mnist()
    assert torch.equal(small_data.train_x, full.train_x[: len(small_data.train_x)])
    assert torch.equal(small_data.test_y, full.test_y[: len(small_data.test_y)])


def test_uncompressed_files_load_like_compressed_ones(data_copy):
    for base in FILES.values():
        with gzip.open(data_copy / (base + ".gz")) as src, open(data_copy / base, "wb") as dst:
            shutil.copyfileobj(src, dst)
        (data_copy / (base + ".gz")).unlink()
    plain = load_fashion_mnist(data_copy, limit_train=100, limit_test=100)
    assert torch.equal(plain.train_x, load_fashion_mnist(limit_train=100, limit_test=100).train_x)


def test_explicit_folder_wins_and_environment_variable_is_used(data_copy, monkeypatch, tmp_path):
    assert find_data_dir(data_copy) == data_copy
    monkeypatch.setenv("BNSTUDY_DATA", str(data_copy))
    assert find_data_dir() == data_copy
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        find_data_dir(empty)  # an explicit folder never falls through to another copy


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No copy anywhere (an empty working folder, no Debian package, no environment
    variables) and no network: torchvision's download fails as it does offline, its
    urlopen raising URLError, after torchvision has made its folders."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BNSTUDY_DATA", raising=False)
    monkeypatch.delenv("TORCHVISION_ROOT", raising=False)
    monkeypatch.setattr(data_module, "DEBIAN_DIR", tmp_path / "nowhere")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path


def test_nothing_found_and_no_download_is_a_user_error(offline):
    with pytest.raises(UserError) as error:
        find_data_dir()
    assert str(error.value) == (
        f"Fashion-MNIST not found (looked in data/fashion-mnist, {offline / 'nowhere'}, data/FashionMNIST/raw); "
        "install it with `make data` (Debian's dataset-fashion-mnist), "
        "or pass --data DIR / set BNSTUDY_DATA to a folder holding the four *-ubyte[.gz] files"
    )


@pytest.mark.parametrize("existing", ["", "data", "data/FashionMNIST", "data/FashionMNIST/raw"])
def test_a_failed_download_removes_only_the_folders_it_created(offline, existing):
    if existing:
        (offline / existing).mkdir(parents=True)
        (offline / existing / "keep.txt").write_text("the user's")
    before = sorted(offline.rglob("*"))
    with pytest.raises(UserError):
        find_data_dir()
    assert sorted(offline.rglob("*")) == before


def _rewrite(path, transform):
    raw = gzip.open(path).read()
    with gzip.open(path, "wb", compresslevel=1) as f:  # fast: the content is what matters
        f.write(transform(raw))


@pytest.mark.parametrize("name, transform, message", [
    ("train-images-idx3-ubyte.gz", lambda raw: raw[: len(raw) // 2], "truncated"),
    ("t10k-labels-idx1-ubyte.gz", lambda raw: raw + b"\0", "truncated or padded"),
    ("train-labels-idx1-ubyte.gz", lambda raw: b"\0\0\x08\x03" + raw[4:], "not an IDX file"),
    ("t10k-images-idx3-ubyte.gz", lambda raw: raw[:8] + (27).to_bytes(4, "big") + raw[12:], "dimensions"),
    ("train-labels-idx1-ubyte.gz", lambda raw: raw[:8] + bytes([11]) + raw[9:], "10 Fashion-MNIST classes"),
])  # fmt: skip
def test_corrupt_files_are_named_in_a_user_error(data_copy, name, transform, message):
    _rewrite(data_copy / name, transform)
    with pytest.raises(UserError, match=message) as error:
        load_fashion_mnist(data_copy)
    assert name in str(error.value)


def test_a_broken_gzip_stream_is_a_user_error(data_copy):
    path = data_copy / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="cannot read"):
        load_fashion_mnist(data_copy)


def test_epoch_batches_cover_every_sample_once_in_a_seeded_order():
    first = epoch_batches(1000, 64, torch.Generator().manual_seed(5), "cpu")
    again = epoch_batches(1000, 64, torch.Generator().manual_seed(5), "cpu")
    other = epoch_batches(1000, 64, torch.Generator().manual_seed(6), "cpu")
    assert torch.equal(torch.cat(first).sort().values, torch.arange(1000))
    assert [len(b) for b in first] == [64] * 15 + [40]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(torch.cat(first), torch.cat(other))


def test_a_lone_last_sample_joins_the_batch_before_it():
    batches = epoch_batches(129, 64, torch.Generator().manual_seed(0), "cpu")
    assert [len(b) for b in batches] == [64, 65]
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(129))


@pytest.mark.parametrize("num_samples, batch_size, sizes", [
    (257, 128, [128, 129]),  # a PreciseBN subset or test set of 2 x 128 + 1
    (10_000, 3, [3] * 3332 + [4]),  # the full test set at a batch size dividing 9,999
    (501, 500, [501]),  # the eval-mode pass's batch of 500
    (1, 500, [1]),  # nothing to merge into: one sample stays one batch
    (10, 4, [4, 4, 2]),  # a remainder of two stays its own batch
    (8, 4, [4, 4]),  # no remainder: nothing merges
])  # fmt: skip
def test_fixed_batches_merge_a_lone_last_sample_and_keep_every_index_in_order(num_samples, batch_size, sizes):
    batches = fixed_batches(num_samples, batch_size, "cpu")
    assert [len(b) for b in batches] == sizes
    assert torch.equal(torch.cat(batches), torch.arange(num_samples))


def test_a_corrupt_deflate_stream_is_a_user_error(data_copy):
    path = data_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[20:28] = b"\xff" * 8  # zlib.error: invalid bit length repeat, not an OSError
    path.write_bytes(raw)
    with pytest.raises(UserError, match=f"{path}: cannot read"):
        load_fashion_mnist(data_copy)


def test_a_sweep_refuses_a_corrupt_dataset_before_any_run(data_copy, tmp_path, capsys, monkeypatch):
    from bnstudy.engine import runner
    from bnstudy.cli import main
    from studies import tiny_spec

    _rewrite(data_copy / "train-labels-idx1-ubyte.gz", lambda raw: raw[:8] + bytes([11]) + raw[9:])
    spec, out = tmp_path / "tiny.toml", tmp_path / "out"
    spec.write_text(tiny_spec("tiny", 'variant = ["none", "bn_before"]\n'))
    monkeypatch.setattr(runner, "fit", lambda *args, **kwargs: pytest.fail("a run trained"))
    assert main(["sweep", str(spec), "--out", str(out), "--data", str(data_copy), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"bnstudy: error: {data_copy / 'train-labels-idx1-ubyte.gz'}: labels are not the 10 "
                   "Fashion-MNIST classes\n")  # fmt: skip
    assert not out.exists()
