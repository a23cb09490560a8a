"""The run settings, declared once (torch-free).

Every setting a run has is one field of RunConfig, the frozen record of one run, and the
field declares its `Setting`: its name, type and default are the field's; its help text,
allowed values or check, and whether it is part of a run's identity are the field's
metadata (`setting`). SETTINGS holds them in the fields' order, and everything else
derives from them:

- RunConfig's validation (`validate`);
- its run_id: a readable name from the settings' `tag`s plus a hash of its identity;
- the fusion key (identity minus the settings a fused group's members may differ in:
  seed and lr), RunConfig.fusion_key;
- the CSV identity columns (IDENTITY_COLUMNS: the settings with `column`);
- `bnstudy run`'s flags (cli.py), the study spec's keys, types and checks (spec.py), the
  report's column types and words (aggregate.typed, wording.py).

Adding a setting is adding its field to RunConfig, plus the code that uses its value (see
docs/DESIGN.md, "Adding a setting"). A setting added after bnstudy 0.1 has
`hashed_at_default=False`: left out of the hash at its default, so every run written
before it existed keeps its run_id and still counts as done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Callable, Collection

from bnstudy.errors import UserError
from bnstudy.config.variants import ACTIVATIONS, NORM_TABLE, NORMS, VARIANTS, norm, variant

TRAIN_SIZE, TEST_SIZE = 60_000, 10_000  # Fashion-MNIST's training and test images
MAX_SEED = 2**32 - 1  # numpy's range; torch takes more, but a seed must survive a CSV as int64
MAX_NAME_LENGTH = 100  # a study name becomes a folder name; file systems allow 255 bytes
# A point costs a test pass plus PreciseBN (bn_before: 0.8 s on one CPU thread, an epoch trains
# in ~5.5 s): 100 points an epoch already cost ~15x its training
MAX_EVALS_PER_EPOCH = 100
# Every integer setting is bounded, so that no absurd value reaches training or the estimates
# (10,000 epochs of all data: some 9 hours of one CPU core a run).
MAX_EPOCHS = 10_000
# The smallest learning rate or BN momentum: far below any useful one, and far above the
# subnormal numbers, which lose digits (1e-320 reads back as 9.99989e-321 in a run id).
MIN_POSITIVE = 1e-12
REQUIRED = object()  # the default of a setting every run must give
# The run_id's hash: 20 hex digits (80 bits) of a SHA-1. Only runs whose tags agree can share
# an id, and n of them do with probability about n²/2^81: 4e-9 at 10^8 runs, where 16 digits
# (64 bits) would leave 3e-4. bnstudy wrote 6 digits (24 bits) before: 10^5 runs under one
# tag prefix held some 300 pairs sharing an id. Those files keep their ids (legacy_run_id).
RUN_ID_DIGITS = 20
LEGACY_RUN_ID_DIGITS = 6


class SettingError(UserError):
    """A setting with an impossible value; `key` names it so each front end can say where."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


# ---------------------------------------------------------------- checks
def integer(low: int, high: int | None = None) -> Callable:
    def check(value) -> str | None:
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            return f"must be {bound} (got {value})"
        return None

    return check


def positive(high: float | None = None) -> Callable:
    """A number in (0, high] (no upper bound when high is None), at least MIN_POSITIVE."""

    def check(value) -> str | None:
        if not value > 0 or (high is not None and value > high):
            return f"must be > 0{f' and <= {high:g}' if high is not None else ''} (got {value})"
        if value < MIN_POSITIVE:
            return f"must be >= {MIN_POSITIVE:g} (got {value})"
        return None

    return check


def ghost_size(value) -> str | None:
    if value == 1:
        return "must be 0 (off) or at least 2: BatchNorm cannot normalise a ghost batch of one sample"
    return integer(0, TRAIN_SIZE)(value)


def folder_name(value) -> str | None:
    if not value or "/" in value or len(value) > MAX_NAME_LENGTH:
        return f"must be a non-empty name without '/', at most {MAX_NAME_LENGTH} characters (got {value!r})"
    return None


# ---------------------------------------------------------------- where a setting applies
# Each takes a run's settings (a dict by name) and says why the setting means nothing for
# that run, or None when it applies (Setting.inapplicable; the rule: docs/DESIGN.md,
# "Settings that do not apply").
def _no_norm_slot(values: dict) -> str | None:
    if not variant(values["variant"]).has_bn:
        return f"variant {values['variant']} has no normalization layer"
    return None


def _no_running_stats(values: dict) -> str | None:
    if not norm(values["norm"]).running_stats:
        return f"norm {values['norm']} keeps no running statistics"
    return _no_norm_slot(values)


def _no_batch_stats(values: dict) -> str | None:
    if not norm(values["norm"]).batch_stats:
        return f"norm {values['norm']} does not normalise over the batch"
    return _no_norm_slot(values)


def _not_batch_norm(values: dict) -> str | None:
    return None if values["norm"] == "batch" else f"bn_impl chooses BatchNorm's code, and norm is {values['norm']}"



# ---------------------------------------------------------------- the declaration
@dataclass(frozen=True)
class Setting:
    """One run setting, as its RunConfig field declares it (SETTINGS: all of them, in order).

    name: the field's name. kind: int, float or str, the field's type (a float setting
    accepts an int and stores a float). optional: the type is `kind | None`, None allowed
    (it means "all", for the image limits). default: the field's default, or REQUIRED when
    it has none. The rest come from the field's metadata (`setting`): help; run_default:
    `bnstudy run`'s default where the setting is REQUIRED in a study spec.
    check(value) -> a problem in words, or None.
    identity: part of what makes the run (all but `study`). column: one of the CSV's
    identity columns. per_member: the members of one fused group may differ in it.
    hashed_at_default: the hash includes it at its default (True for bnstudy 0.1's
    settings, whose old run ids must hold). tag(value): its part of the readable run_id
    ("" for none). label: how sentences and figure labels name it. inapplicable(values):
    why the setting means nothing for a run of these settings (a dict), or None when it
    applies: a grid sets it to its default there, and a run refuses another value.
    """

    name: str
    kind: type
    default: object
    help: str
    check: Callable | None = None
    choices: Collection[str] | None = None  # a tuple, or a live view (variants.NORMS)
    optional: bool = False
    run_default: object = REQUIRED
    metavar: str | None = None
    identity: bool = True
    column: bool = False
    per_member: bool = False
    hashed_at_default: bool = True
    tag: Callable | None = None
    label: str | None = None
    inapplicable: Callable | None = None

    @property
    def words(self) -> str:
        return self.label or self.name

    def problem(self, value) -> str | None:
        """What is wrong with `value` for this setting, or None when it is allowed."""
        if value is None:
            return None if self.optional else f"must be {TYPE_WORDS[self.kind]} (got None)"
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else self.kind):
            return f"must be {TYPE_WORDS[self.kind]} (got {value!r})"
        if self.kind is float and not math.isfinite(value):
            return f"must be a finite number (got {value!r})"
        if self.choices is not None and value not in self.choices:
            return f"unknown value {value!r}; expected one of {', '.join(self.choices)}"
        return self.check(value) if self.check else None


TYPE_WORDS = {float: "a number", int: "an integer", str: "a string"}
SETTING = "setting"  # the key of a RunConfig field's metadata that holds its Setting's options


def setting(help: str, **options) -> dict:
    """A RunConfig field's metadata: its Setting's help and other options (check, choices,
    column, tag, ... as Setting names them); name, kind, optional and default are the
    field's own."""
    return {SETTING: {"help": help, **options}}


# ---------------------------------------------------------------- one run
@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that determines one training run's numbers (and so its run_id): one field
    per run setting, each declaring its Setting (`setting`), in the order of SETTINGS: the
    order of the run_id's tags and of the CSV's columns. `study` names the results folder
    and is not part of the identity. Validated on creation (`validate`: SettingError)."""

    study: str = field(default="single", metadata=setting(
        "the study's name: its results folder under results/", check=folder_name, identity=False, column=True))
    variant: str = field(metadata=setting("where BatchNorm goes", choices=VARIANTS, column=True, tag=str))
    norm: str = field(default="batch", metadata=setting(
        "the normalization layer where the variant puts BatchNorm: "
        + ", ".join(f"{n.name} ({n.about})" for n in NORM_TABLE.values()), choices=NORMS, column=True,
        hashed_at_default=False, tag=lambda v: norm(v).tag, label="normalization", inapplicable=_no_norm_slot))
    activation: str = field(default="sigmoid", metadata=setting(
        "the activation of every [norm/act] block", choices=tuple(ACTIVATIONS), column=True, hashed_at_default=False,
        tag=lambda v: "" if v == "sigmoid" else v))
    pool: str = field(default="max", metadata=setting(
        "LeNet's 2x2 pooling: max (the notebook's) or avg", choices=("max", "avg"), column=True,
        hashed_at_default=False, tag=lambda v: "" if v == "max" else "avgpool", label="pooling"))
    bn_impl: str = field(default="torch", metadata=setting(
        "nn.BatchNorm or the textbook's from-scratch batch_norm", choices=("torch", "scratch"), column=True,
        tag=lambda v: "scratch" if v == "scratch" else "", label="BN implementation", inapplicable=_not_batch_norm))
    bn_momentum: float = field(default=0.1, metadata=setting(
        "BatchNorm's momentum, PyTorch's convention: running = (1 - m) * running + m * batch; about 2/m recent "
        "batches dominate", check=positive(1.0), metavar="M", column=True, hashed_at_default=False,
        tag=lambda v: "" if v == 0.1 else f"bnm{v:g}", label="BN momentum", inapplicable=_no_running_stats))
    ghost_batch_size: int = field(default=0, metadata=setting(
        "Ghost BatchNorm: training batches are normalised in sub-batches of this many samples, each one update of "
        "the running statistics (0: off; must divide the batch size)", check=ghost_size, metavar="N", column=True,
        hashed_at_default=False, tag=lambda v: "" if v == 0 else f"gb{v}", label="ghost batch size",
        inapplicable=_no_batch_stats))
    frozen_bn_epochs: int = field(default=0, metadata=setting(
        "for the last N epochs, BatchNorm normalises with its running statistics in training too and stops "
        "updating them", check=integer(0, MAX_EPOCHS), metavar="N", column=True, hashed_at_default=False,
        tag=lambda v: "" if v == 0 else f"fz{v}", label="frozen BN epochs", inapplicable=_no_running_stats))
    optimizer: str = field(default="adam", metadata=setting(
        "Adam (PyTorch's defaults) or plain SGD", choices=("adam", "sgd"), column=True, tag=str))
    lr: float = field(metadata=setting(
        "learning rate", check=positive(), run_default=1e-3, column=True, per_member=True,
        tag=lambda v: f"lr{v:.0e}", label="learning rate"))
    batch_size: int = field(metadata=setting(
        "training batch size (bounds: see validate)", run_default=256, column=True, tag=lambda v: f"bs{v}",
        label="batch size"))
    seed: int = field(default=0, metadata=setting(
        "fixes initialisation, data order and the PreciseBN sample", check=integer(0, MAX_SEED), column=True,
        per_member=True, tag=lambda v: f"s{v}"))
    epochs: int = field(metadata=setting("training epochs", check=integer(1, MAX_EPOCHS), run_default=5))
    limit_train: int | None = field(default=None, metadata=setting(
        "use the first N training images", check=integer(2, TRAIN_SIZE), metavar="N", label="training images"))
    limit_test: int | None = field(default=None, metadata=setting(
        "use the first M test images", check=integer(1, TEST_SIZE), metavar="M", label="test images"))
    precise_bn_samples: int = field(default=8192, metadata=setting(
        "training images that re-estimate BN statistics for the PreciseBN diagnostic", check=integer(2, TRAIN_SIZE),
        metavar="K", label="PreciseBN images"))
    evals_per_epoch: int = field(default=1, metadata=setting(
        "test accuracy (eval mode, and PreciseBN for BN variants) measured this many times per epoch at evenly "
        "spaced steps, the last at the epoch's end, into runs/<run_id>.evals.csv (1: only the per-epoch CSV)",
        check=integer(1, MAX_EVALS_PER_EPOCH), metavar="K", hashed_at_default=False,
        tag=lambda v: "" if v == 1 else f"k{v}", label="evaluations per epoch"))

    def __post_init__(self):
        validate(self)

    @property
    def train_size(self) -> int:
        return self.limit_train or TRAIN_SIZE

    @property
    def has_norm(self) -> bool:
        """The variant has a normalization layer (bn_before, bn_after; not none)."""
        return variant(self.variant).has_bn

    @property
    def keeps_running_stats(self) -> bool:
        """Its normalization layers keep running statistics (norm batch or batchrenorm): eval
        mode uses them, and the PreciseBN and test-batch-statistics diagnostics apply; a run
        without them leaves those CSV columns empty."""
        return self.has_norm and norm(self.norm).running_stats

    @property
    def uses_batch_stats(self) -> bool:
        """Training normalises over the batch (norm batch or batchrenorm): batches need two samples."""
        return self.has_norm and norm(self.norm).batch_stats

    def identity(self) -> dict:
        """The settings that define the run (all but `study`), JSON-ready: a run JSON's `config`."""
        return {name: getattr(self, name) for name in RUN_SETTINGS}

    def hashed_identity(self) -> dict:
        """identity() without the later settings at their defaults: what the run_id hashes."""
        return {name: value for name, value in self.identity().items()
                if BY_NAME[name].hashed_at_default or value != BY_NAME[name].default}  # fmt: skip

    @property
    def run_id(self) -> str:
        """Readable and stable, e.g. `bn_before-adam-lr1e-03-bs256-s0-02972c4b9e67acd32881`:
        the settings' tags, then RUN_ID_DIGITS hex digits of a hash of hashed_identity(),
        which tells apart what the tags leave out. The name of the files a run writes."""
        return self._named(RUN_ID_DIGITS)

    @property
    def legacy_run_id(self) -> str:
        """The run_id that bnstudy gave this run before its hash grew: the same tags, then
        the hash's first LEGACY_RUN_ID_DIGITS digits, e.g. `bn_before-adam-lr1e-03-bs256-s0-02972c`.
        Files under it are still this run's (store.RunStore.run_id_of)."""
        return self._named(LEGACY_RUN_ID_DIGITS)

    def _named(self, digits: int) -> str:
        canonical = json.dumps(self.hashed_identity(), sort_keys=True)
        digest = hashlib.sha1(canonical.encode()).hexdigest()[:digits]
        tags = (s.tag(getattr(self, s.name)) for s in SETTINGS if s.tag is not None)
        return "-".join([*(tag for tag in tags if tag), digest])

    def fusion_key(self) -> tuple:
        """What runs must share to train as one fused group: the identity but the settings
        its members may differ in (seed, lr)."""
        return tuple((s.name, getattr(self, s.name)) for s in SETTINGS if s.identity and not s.per_member)


def _declared(config_field: dataclasses.Field, annotation) -> Setting:
    """The Setting that a RunConfig field declares: its name, its type (`kind | None`: an
    optional setting), its default (REQUIRED without one) and its metadata's options.
    TypeError for a type that is no setting's."""
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    kind = [k for k in kinds if k is not type(None)]
    if len(kind) != 1 or kind[0] not in TYPE_WORDS:
        raise TypeError(f"RunConfig.{config_field.name}: {annotation} is no setting's type (int, float or str)")
    default = REQUIRED if config_field.default is dataclasses.MISSING else config_field.default
    return Setting(name=config_field.name, kind=kind[0], default=default, optional=type(None) in kinds,
                   **config_field.metadata[SETTING])  # fmt: skip


_ANNOTATIONS = typing.get_type_hints(RunConfig)
SETTINGS = tuple(_declared(f, _ANNOTATIONS[f.name]) for f in dataclasses.fields(RunConfig))
BY_NAME = {s.name: s for s in SETTINGS}
RUN_SETTINGS = tuple(s.name for s in SETTINGS if s.identity)  # a run's identity, spec keys and [grid] axes
IDENTITY_COLUMNS = ["run_id", *(s.name for s in SETTINGS if s.column)]
METRIC_COLUMNS = [
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
    "test_acc_batch_stats", "test_acc_precise_bn",
    "train_seconds", "eval_seconds", "samples_per_second",
]  # fmt: skip
CSV_COLUMNS = IDENTITY_COLUMNS + METRIC_COLUMNS
# runs/<run_id>.evals.csv (runs with evals_per_epoch > 1): one row per point, `step` counts the
# run's optimizer steps (1-based), epoch_fraction = (epoch - 1) + step in the epoch / its steps
EVALS_COLUMNS = ["run_id", "epoch", "point", "step", "epoch_fraction", "test_acc", "test_acc_precise_bn"]
# Identity columns a CSV written before its setting existed lacks (the setting was at its default then).
LATER_COLUMNS = frozenset(s.name for s in SETTINGS if s.column and not s.hashed_at_default)


def csv_layout_ok(columns: list[str]) -> bool:
    """Whether a run CSV's header is this version's CSV_COLUMNS, or an older version's
    (the same in the same order, without columns of settings added since)."""
    return list(columns) == [c for c in CSV_COLUMNS if c in set(columns) or c not in LATER_COLUMNS]


# bnstudy 0.1 ran `none` runs at other BN momenta, identical runs under their own ids: a
# RunConfig still takes them, so that their files load (grids no longer make them: applicable).
TOLERATED_FOR_NONE = frozenset({"bn_momentum"})


def applicable(values: dict) -> dict:
    """`values` (some of a run's settings by name, the variant among them; the rest are at
    their defaults) with every setting that does not apply to that run (Setting.inapplicable)
    set to its default: what a grid point becomes, so that an axis a run ignores
    (bn_momentum for `none`) does not multiply identical runs. The same keys as `values`."""
    full = {s.name: s.default for s in SETTINGS if s.default is not REQUIRED} | dict(values)
    changed = True
    while changed:  # norm first reaches its default for `none`, then what depends on norm
        changed = False
        for s in SETTINGS:
            if s.inapplicable and full[s.name] != s.default and s.inapplicable(full):
                full[s.name], changed = s.default, True
    return {key: full[key] for key in values}


def validate(config) -> None:
    """Raise SettingError naming the first impossible setting of `config`: each setting's
    own check, a setting asked for where it does not apply, then the checks that involve
    two settings."""
    for setting in SETTINGS:
        problem = setting.problem(getattr(config, setting.name))
        if problem:
            raise SettingError(setting.name, problem)
    values = config.identity()
    for setting in SETTINGS:
        value = values.get(setting.name)
        if setting.inapplicable is None or value == setting.default:
            continue
        if setting.name in TOLERATED_FOR_NONE and config.variant == "none":
            continue
        why = setting.inapplicable(values)
        if why:
            raise SettingError(setting.name, f"does not apply: {why} (got {value!r}; leave it at {setting.default!r})")
    # Batch statistics need at least two samples per batch; a batch cannot exceed the training set.
    low = 2 if config.uses_batch_stats else 1
    if not low <= config.batch_size <= config.train_size:
        raise SettingError("batch_size", f"must be between {low} and {config.train_size} (got {config.batch_size})")
    # The batch-statistics diagnostic normalises test batches in train mode: two images at least.
    if config.keeps_running_stats and config.limit_test is not None and config.limit_test < 2:
        raise SettingError("limit_test", f"must be >= 2 for a variant with BatchNorm (got {config.limit_test})")
    if config.ghost_batch_size and config.batch_size % config.ghost_batch_size:
        raise SettingError("ghost_batch_size", f"must divide the batch size {config.batch_size} "
                                               f"(got {config.ghost_batch_size})")  # fmt: skip
    if config.frozen_bn_epochs >= config.epochs:
        raise SettingError("frozen_bn_epochs", f"must be less than the {config.epochs} epochs, so that "
                                               f"BatchNorm learns its statistics first (got {config.frozen_bn_epochs})")
    # Points fall after distinct steps only when there are at least as many steps as points.
    steps = steps_per_epoch(config.train_size, config.batch_size)
    if config.evals_per_epoch > steps:
        raise SettingError("evals_per_epoch", f"must be at most the {steps} training steps of an epoch "
                                              f"(got {config.evals_per_epoch})")  # fmt: skip


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    """Optimizer steps in one epoch over train_size images: train_size / batch_size rounded
    up, less one when the last batch would hold a lone sample (a remainder of one, or any
    batch at batch size 1), which joins the batch before (data.split_batches)."""
    batches = -(-train_size // batch_size)
    lone_last = batches > 1 and train_size - (batches - 1) * batch_size == 1
    return batches - lone_last


def from_record(config: dict, study: str = "single"):
    """The RunConfig of a run JSON's `config` (written by any bnstudy version: settings added
    since take their defaults). SettingError or TypeError when it is not a valid config."""
    return RunConfig(study=study, **config)
