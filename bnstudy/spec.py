"""Run settings: one frozen RunConfig per training run, its validation and its stable id.

Every setting has one name everywhere: the CLI flag `--limit-train` is the spec key
`limit_train` and the CSV/JSON field `limit_train`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from bnstudy.data import TEST_SIZE, TRAIN_SIZE
from bnstudy.errors import UserError
from bnstudy.models import BN_IMPLS, VARIANTS

OPTIMIZERS = ("adam", "sgd")
DEFAULT_PRECISE_BN_SAMPLES = 8192


class SettingError(UserError):
    """A setting with an impossible value; `key` names it so each front end can say where."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run's numbers (and so its run_id).

    `limit_train` / `limit_test` keep the first N images (None: all). `precise_bn_samples`
    training images (capped at the training-set size) re-estimate BN statistics for the
    PreciseBN diagnostic. `study` names the results folder and is not part of the identity.
    """

    variant: str
    lr: float
    batch_size: int
    epochs: int
    seed: int = 0
    bn_impl: str = "torch"
    optimizer: str = "adam"
    limit_train: int | None = None
    limit_test: int | None = None
    precise_bn_samples: int = DEFAULT_PRECISE_BN_SAMPLES
    study: str = "single"

    def __post_init__(self):
        validate(self)

    @property
    def train_size(self) -> int:
        return self.limit_train or TRAIN_SIZE

    def identity(self) -> dict:
        """The settings that define the run (all but `study`), JSON-ready."""
        fields = dataclasses.asdict(self)
        fields.pop("study")
        return fields

    @property
    def run_id(self) -> str:
        """Readable and stable, e.g. `bn_before-adam-lr1e-03-bs256-s0-3fa2c1`: the same
        settings always give the same id; the hash tells apart what the name leaves out."""
        canonical = json.dumps(self.identity(), sort_keys=True)
        digest = hashlib.sha1(canonical.encode()).hexdigest()[:6]
        impl = "-scratch" if self.bn_impl == "scratch" else ""
        return f"{self.variant}{impl}-{self.optimizer}-lr{self.lr:.0e}-bs{self.batch_size}-s{self.seed}-{digest}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(key: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingError(key, f"unknown value {value!r}; expected one of {', '.join(choices)}")


def _check_int(key: str, value, low: int, high: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not _is_int(value):
        raise SettingError(key, f"must be an integer (got {value!r})")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SettingError(key, f"must be {bound} (got {value})")


def validate(config: RunConfig) -> None:
    """Raise SettingError naming the first impossible setting of `config`."""
    _check_choice("variant", config.variant, VARIANTS)
    _check_choice("bn_impl", config.bn_impl, BN_IMPLS)
    _check_choice("optimizer", config.optimizer, OPTIMIZERS)
    if not isinstance(config.lr, (int, float)) or isinstance(config.lr, bool) or not math.isfinite(config.lr):
        raise SettingError("lr", f"must be a finite number (got {config.lr!r})")
    if config.lr <= 0:
        raise SettingError("lr", f"must be > 0 (got {config.lr})")
    _check_int("epochs", config.epochs, 1)
    _check_int("seed", config.seed, 0)
    _check_int("limit_train", config.limit_train, 2, TRAIN_SIZE, optional=True)
    _check_int("limit_test", config.limit_test, 1, TEST_SIZE, optional=True)
    # BatchNorm needs at least two samples per batch; a batch cannot exceed the training set.
    _check_int("batch_size", config.batch_size, 2 if config.variant != "none" else 1, config.train_size)
    _check_int("precise_bn_samples", config.precise_bn_samples, 2)
    if not isinstance(config.study, str) or not config.study or "/" in config.study:
        raise SettingError("study", f"must be a non-empty name without '/' (got {config.study!r})")
