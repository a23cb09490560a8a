"""The model variants, activations and normalization layers, as data (torch-free).

A variant is one entry: the recipe of its [norm/act] block (which models.build_lenet
turns into layers), its colour in every figure, and its measured CPU costs for the sweep's
cost model. Adding a variant is adding an entry here; a variant without measured costs or
a colour gets the fallbacks below instead of failing at run time.

LeNet (models.py) puts one [norm/act] block after each of its first four layers:
    none: act    bn_before: BatchNorm -> act    bn_after: act -> BatchNorm
where act is the run's `activation` (the notebook's sigmoid by default) and "BatchNorm"
stands for the run's `norm` (NORM_TABLE below; bnstudy.engine.norms builds the layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# torch.nn class of each activation; all are non-decreasing, so max-pooling commutes with
# them (models.conv_block relies on it to pool before a trailing activation).
ACTIVATIONS = {"sigmoid": "Sigmoid", "relu": "ReLU", "tanh": "Tanh"}


@dataclass(frozen=True)
class Variant:
    """One LeNet variant.

    block: the [norm/act] block's layers in order, each "bn" (BatchNorm) or "act" (the
    run's activation). colour: its colour in every figure. train_us: measured single-thread
    CPU microseconds per training image by batch size (forward, backward, step); forward_us:
    per image of an evaluation pass; None: not measured, the fallback estimate is used.
    """

    name: str
    block: tuple[str, ...]
    colour: str
    about: str
    train_us: dict[int, float] | None = field(default=None, compare=False)
    forward_us: float | None = None

    @property
    def has_bn(self) -> bool:
        return "bn" in self.block


# Colours: Okabe-Ito (colour-blind safe). Costs: single-thread CPU microseconds per image on
# this project's 2-core machine (torch 2.14.1, two one-thread worker processes side by
# side, as `--jobs 2` runs them), measured on 2026-11-26 by `python bench/cost_table.py
# results/default results/quick` after `make sweep` and `make sweep EXP=experiments/quick.toml`:
# the lower quartile of each variant's and batch size's per-epoch costs (all epochs but
# the first; the shared machine slows some), rounded up. Sigmoid runs; the activation
# changes a step's cost by a few percent, which the ETA's rescaling absorbs.
VARIANT_TABLE = (
    Variant("none", ("act",), "#7f7f7f", "no BatchNorm",
            {32: 121, 64: 79, 256: 67, 1024: 86}, 19),
    Variant("bn_before", ("bn", "act"), "#d55e00", "BatchNorm before each activation (the notebook's)",
            {32: 145, 64: 111, 256: 91, 1024: 123}, 31),
    Variant("bn_after", ("act", "bn"), "#0072b2", "BatchNorm after each activation",
            {32: 141, 64: 107, 256: 96, 1024: 110}, 32),
)  # fmt: skip
VARIANTS = tuple(v.name for v in VARIANT_TABLE)
BN_VARIANTS = tuple(v.name for v in VARIANT_TABLE if v.has_bn)
# For a variant added without figures: the costliest measured one (an ETA that errs long),
# and colours from the rest of the Okabe-Ito palette.
FALLBACK_COSTS = VARIANT_TABLE[1]
FALLBACK_COLOURS = ("#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442", "#000000")


_BY_NAME = {v.name: v for v in VARIANT_TABLE}


@dataclass(frozen=True)
class Norm:
    """One kind of normalization layer for the "bn" slot of a variant's block, as data:
    bnstudy.engine.norms holds how to build it (one registry entry per name here).

    running_stats: it keeps running statistics that eval mode normalises with (then the
    BN momentum, frozen_bn_epochs and the PreciseBN and test-batch-statistics diagnostics
    apply; otherwise those CSV columns stay empty). batch_stats: training normalises
    over the batch (then ghost_batch_size applies, and a batch needs two samples).
    tag: its part of a run_id ("" for BatchNorm, the default).
    """

    name: str
    about: str
    running_stats: bool
    batch_stats: bool
    tag: str


# The torch-free half of the norm registry (bnstudy.engine.norms.REGISTRY is the other: how to
# build each), by name. Adding a norm is one entry here and one there, plus its layer.
NORM_TABLE = {n.name: n for n in (
    Norm("batch", "BatchNorm, the notebook's", running_stats=True, batch_stats=True, tag=""),
    Norm("batchrenorm", "Batch Renormalization, Ioffe 2017", running_stats=True, batch_stats=True, tag="brn"),
    Norm("group", "GroupNorm", running_stats=False, batch_stats=False, tag="gn"),
    Norm("layer", "LayerNorm: GroupNorm with one group for the convolutions", running_stats=False,
         batch_stats=False, tag="ln"),
)}  # fmt: skip
NORMS = NORM_TABLE.keys()  # a live view, so that the `norm` setting's choices are every registered norm


def norm(name: str) -> Norm:
    """The entry of norm `name` (KeyError for an unknown one)."""
    return NORM_TABLE[name]


def variant(name: str) -> Variant:
    """The entry of variant `name` (KeyError for an unknown one; settings validation
    refuses those before anything runs)."""
    return _BY_NAME[name]


def palette(names) -> dict[str, str]:
    """A colour for each variant name: its own, or a fallback colour for a name the table
    lacks (results of a variant since removed), so a figure never fails on a colour."""
    unknown = [name for name in names if name not in _BY_NAME]
    fallbacks = dict(zip(unknown, FALLBACK_COLOURS * (1 + len(unknown) // len(FALLBACK_COLOURS))))
    return {name: _BY_NAME[name].colour if name in _BY_NAME else fallbacks[name] for name in names}
