"""The report's metrics, declared once (torch-free).

Each metric of summary.csv is one `Metric`: its column, the label every sentence, table
header and figure axis uses, its unit, what it measures, which curve it is from, and which
direction is better. bnstudy.results.aggregate computes the values (ALL_METRICS there must equal
the keys here: tested); everything that names a metric takes the name from here.

Adding a metric: its entry here and the code in aggregate.py that computes its column
(docs/DESIGN.md, "Adding a metric").
"""

from __future__ import annotations

from dataclasses import dataclass

EPOCH_ENDS, EVERY_POINT = "epoch ends", "every point"


@dataclass(frozen=True)
class Metric:
    """One metric. unit: "%" for an accuracy, "pp" for a change or spread of accuracies;
    better: "higher" or "lower"; curve: EPOCH_ENDS or EVERY_POINT (the fine curve)."""

    column: str
    label: str
    unit: str
    measures: str
    curve: str = EPOCH_ENDS
    better: str = "lower"

    @property
    def header(self) -> str:
        """ "worst drop (pp)": a table column's or an axis's title."""
        return f"{self.label} ({self.unit})"


def _volatility(prefix: str, suffix: str, curve: str, whose: str) -> list[Metric]:
    """The three volatility metrics of one accuracy curve."""
    step = "point" if curve == EVERY_POINT else "epoch"
    name = f"{prefix}{{}}{suffix}"
    label = f"{'fine ' if curve == EVERY_POINT else ''}{{}}{f', {whose}' if whose else ''}"
    return [
        Metric(name.format("mean_abs_change"), label.format("mean |change|"), "pp",
               f"mean absolute change of test accuracy from one {step} to the next", curve),
        Metric(name.format("worst_drop"), label.format("worst drop"), "pp",
               f"largest fall of test accuracy below an earlier {step}'s best", curve),
        Metric(name.format("late_std"), label.format("late std"), "pp",
               "population std of test accuracy over the last half of the epochs", curve),
    ]  # fmt: skip


_DECLARED = [
    Metric("final_acc", "final accuracy", "%", "test accuracy at the last counted epoch", better="higher"),
    Metric("best_acc", "best accuracy", "%", "best test accuracy of any counted epoch", better="higher"),
    *_volatility("", "", EPOCH_ENDS, ""),
    Metric("gen_gap", "generalization gap", "pp", "train minus test accuracy at the last counted epoch"),
    Metric("ema_gap", "PreciseBN gain", "pp", "mean of PreciseBN minus eval-mode test accuracy over the epochs",
           better="higher"),
    *[m for m in _volatility("", "_precise_bn", EPOCH_ENDS, "PreciseBN") if "late_std" not in m.column],
    *[m for m in _volatility("", "_batch_stats", EPOCH_ENDS, "test-batch statistics") if "late_std" not in m.column],
    *_volatility("fine_", "", EVERY_POINT, ""),
    *_volatility("fine_", "_precise_bn", EVERY_POINT, "PreciseBN"),
]  # fmt: skip
METRICS: dict[str, Metric] = {m.column: m for m in _DECLARED}


def label(column: str) -> str:
    """The metric's label: "worst drop"."""
    return METRICS[column].label


def header(column: str) -> str:
    """The metric's table header: "worst drop (pp)"."""
    return METRICS[column].header
