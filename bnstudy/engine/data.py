"""Find and load the real Fashion-MNIST; iterate over it in seeded, device-resident batches.

The whole dataset (60,000 + 10,000 images of 28x28 bytes, about 55 MB as float32) is
decoded once into tensors and moved to the run's device, so an epoch is a sequence of
tensor slices: no DataLoader, no worker processes, no per-batch host synchronisation.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from bnstudy.errors import UserError
from bnstudy.config.settings import TEST_SIZE, TRAIN_SIZE, steps_per_epoch

NUM_CLASSES, IMAGE_SIDE = 10, 28

# Base names of the four IDX files; each may also be stored gzip-compressed (".gz").
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = (
    "install it with `make data` (Debian's dataset-fashion-mnist), "
    "or pass --data DIR / set BNSTUDY_DATA to a folder holding the four *-ubyte[.gz] files"
)


@dataclass(frozen=True)
class FashionMNIST:
    """The dataset on one device.

    train_x: (N_train, 1, 28, 28) float32 in [0, 1] (torchvision's ToTensor scaling, as the
    reference notebook uses); train_y: (N_train,) int64 in 0..9; likewise test_x, test_y.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device | str) -> FashionMNIST:
        """The same data on `device` (a no-op when it is already there)."""
        return FashionMNIST(*(t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)))


def candidate_dirs(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Where to look, in order: --data, else $BNSTUDY_DATA (either one is the only place
    looked in), else ./data/fashion-mnist, Debian's folder, then torchvision roots
    (`<root>/FashionMNIST/raw`) under ./data and $TORCHVISION_ROOT."""
    chosen = explicit or os.environ.get("BNSTUDY_DATA")
    if chosen:
        return [Path(chosen)]
    dirs = [Path("data/fashion-mnist"), DEBIAN_DIR, Path("data/FashionMNIST/raw")]
    if os.environ.get("TORCHVISION_ROOT"):
        dirs.append(Path(os.environ["TORCHVISION_ROOT"]) / "FashionMNIST" / "raw")
    return dirs


def _file_in(directory: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The first candidate folder that holds all four files; UserError if none does.

    An explicit folder (--data or $BNSTUDY_DATA) that lacks a file is an error naming the
    file, never a silent fall-through to another copy.
    """
    candidates = candidate_dirs(explicit)
    for directory in candidates:
        missing = [base for base in FILES.values() if _file_in(directory, base) is None]
        if not missing:
            return directory
        if explicit or os.environ.get("BNSTUDY_DATA"):
            raise UserError(f"{directory}: no {missing[0]}[.gz] there; {INSTALL_HINT}")
    return _download_with_torchvision(candidates)


def _download_with_torchvision(looked_in: list[Path]) -> Path:
    """Last resort: torchvision's own download into ./data (needs the internet).

    torchvision creates ./data/FashionMNIST/raw before it tries the network; when the
    download fails, the folders this attempt created are removed again (pre-existing
    ones are kept): a failed lookup leaves nothing behind in the user's working folder.
    """
    target = Path("data/FashionMNIST/raw")
    created = _outermost_missing(target)
    try:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        TorchvisionFashionMNIST(root="data", train=True, download=True)
        TorchvisionFashionMNIST(root="data", train=False, download=True)
    except Exception:  # no network, a proxy error, a checksum mismatch: all mean "not found"
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        where = ", ".join(str(d) for d in looked_in)
        raise UserError(f"Fashion-MNIST not found (looked in {where}); {INSTALL_HINT}") from None
    return target


def _outermost_missing(folder: Path) -> Path | None:
    """The outermost of `folder` and its parents that does not exist (what
    os.makedirs(folder) would create first), or None when `folder` exists."""
    for path in [*reversed(folder.parents), folder]:
        if not path.exists():
            return path
    return None


def read_idx(path: Path, magic: int, count: int) -> torch.Tensor:
    """Decode one IDX file into a uint8 tensor: (count, 28, 28) for images, (count,) for labels.

    Checks the magic number, the dimensions and the payload length, so a truncated,
    corrupt or swapped file is a UserError naming it.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; a bad deflate stream is not
        raise UserError(f"{path}: cannot read ({exc}); {INSTALL_HINT}") from None
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        raise UserError(f"{path}: not an IDX file of {'images' if ndim == 3 else 'labels'}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = (count, IMAGE_SIDE, IMAGE_SIDE)[:ndim]
    if dims != expected:
        raise UserError(f"{path}: dimensions {dims}, expected {expected}")
    payload = raw[header:]
    if len(payload) != count * (IMAGE_SIDE * IMAGE_SIDE if ndim == 3 else 1):
        raise UserError(f"{path}: truncated or padded ({len(payload)} data bytes for dimensions {dims})")
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).reshape(expected)


def _labels(path: Path, count: int) -> torch.Tensor:
    labels = read_idx(path, LABELS_MAGIC, count).long()
    if labels.max() >= NUM_CLASSES or torch.bincount(labels, minlength=NUM_CLASSES).min() == 0:
        raise UserError(f"{path}: labels are not the 10 Fashion-MNIST classes")
    return labels


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> FashionMNIST:
    """Find, decode and verify the dataset; keep the first `limit_*` images; move to `device`.

    Raises UserError for a missing, truncated or wrong file.
    """
    train_x, test_x, train_y, test_y = _decoded(find_data_dir(data_dir))
    train_x, train_y = train_x[:limit_train], train_y[:limit_train].clone()  # the decoded copy stays as it is
    test_x, test_y = test_x[:limit_test], test_y[:limit_test].clone()
    to_float = lambda x: (x.float() / 255.0).unsqueeze(1)  # noqa: E731  (N,28,28) u8 -> (N,1,28,28)
    return FashionMNIST(to_float(train_x), train_y, to_float(test_x), test_y).to(device)


def check_dataset(data_dir: str | os.PathLike | None = None) -> Path:
    """Find the dataset and decode and check its four files, as load_fashion_mnist does;
    returns its folder. UserError for a missing, truncated or wrong file. The sweep's driver
    calls it before the first run, so that a corrupt file is one error, not a failure of
    every run; the decoded files stay for a load in this process (_decoded)."""
    directory = find_data_dir(data_dir)
    _decoded(directory)
    return directory


_DECODED: dict[tuple, tuple[torch.Tensor, ...]] = {}  # the last folder's decoded files, by their names, sizes and times


def _decoded(directory: Path) -> tuple[torch.Tensor, ...]:
    """(train images, test images, train labels, test labels) of the files in `directory`,
    uint8 and int64 on the CPU, decoded and checked once for as long as the files stay the same."""
    paths = {key: _file_in(directory, base) for key, base in FILES.items()}
    try:
        key = tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in paths.values())
    except (OSError, AttributeError) as exc:  # AttributeError: a file gone since find_data_dir (None)
        raise UserError(f"{directory}: cannot read the dataset ({exc}); {INSTALL_HINT}") from None
    if key not in _DECODED:
        _DECODED.clear()
        _DECODED[key] = (read_idx(paths["train_images"], IMAGES_MAGIC, TRAIN_SIZE),
                         read_idx(paths["test_images"], IMAGES_MAGIC, TEST_SIZE),
                         _labels(paths["train_labels"], TRAIN_SIZE),
                         _labels(paths["test_labels"], TEST_SIZE))  # fmt: skip
    return _DECODED[key]


def split_batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """`order` (N, ...) cut along dim 0 into steps_per_epoch(N, batch_size) consecutive batches.

    Every row appears exactly once. The last batch keeps the remainder, as a DataLoader
    without drop_last does, except that a lone final sample joins the batch before it:
    train-mode BatchNorm cannot normalise a batch of one. The rule is settings.steps_per_epoch's,
    which the step counts of the points and the run-file checks use too.
    """
    batches = list(torch.split(order, batch_size))
    if len(batches) > steps_per_epoch(len(order), batch_size):  # a lone last sample
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def epoch_batches(num_samples: int, batch_size: int, generator: torch.Generator, device) -> list[torch.Tensor]:
    """One epoch's shuffled index batches (split_batches of a permutation), drawn from
    `generator` (a CPU generator, so the order for a seed is the same on every device)
    and moved to `device` in one copy."""
    perm = torch.randperm(num_samples, generator=generator).to(device, non_blocking=True)
    return split_batches(perm, batch_size)


def fixed_batches(num_samples: int, batch_size: int, device) -> list[torch.Tensor]:
    """Index batches of 0..num_samples-1 in order (split_batches), on `device`: for
    evaluation, including the train-mode BN diagnostics, which a batch of one would break."""
    return split_batches(torch.arange(num_samples, device=device), batch_size)
