"""How the report names settings, cells and numbers, in figure labels and in sentences."""

from __future__ import annotations

import pandas as pd

from bnstudy.aggregate import CELL_KEYS
from bnstudy.settings import SETTINGS


# ---------------------------------------------------------------- settings
SETTING_NAMES = {s.name: s.words for s in SETTINGS}  # how sentences and labels name them (the declaration's label)
# The axes every figure lays out explicitly and every cell's text names; any other setting
# that varies joins the facet label and the text.
PLOT_AXES = ("variant", "lr", "batch_size")


def value_text(key: str, value) -> str:
    """A setting's value as text: a number as few digits as it needs (lr 0.001 -> "0.001"),
    limit_train None -> "all"."""
    if pd.isna(value):
        return "all"
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting_text(key: str, value) -> str:
    """A setting as labels and sentences show it: "learning rate 0.001", "batch size 256",
    "limit_train all"."""
    return f"{SETTING_NAMES[key]} {value_text(key, value)}"


def extra_axes(frame: pd.DataFrame) -> list[str]:
    """The cell settings other than PLOT_AXES that take more than one value in `frame`."""
    return [k for k in CELL_KEYS if k not in PLOT_AXES and frame[k].nunique(dropna=False) > 1]


# ---------------------------------------------------------------- numbers and lists
def pct(x: float) -> str:
    """A fraction as percent: 0.8384 -> "83.8%"."""
    return f"{100 * x:.1f}%"


def pp(x: float) -> str:
    """A difference of fractions in percentage points: 0.107 -> "10.7 pp"."""
    return f"{100 * x:.1f} pp"


def plural(n: int, noun: str) -> str:
    """ "1 run", "2 runs"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def join_words(items: list[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def cell_text(row, extra: list[str]) -> str:
    """A cell (or run) in words: "bn_before at learning rate 0.001, batch size 256" plus the
    other settings that vary in the study (`extra`)."""
    return f"{row['variant']} at " + ", ".join(setting_text(k, row[k]) for k in ["lr", "batch_size", *extra])


def per_variant(values: pd.Series, fmt) -> str:
    """A Series indexed by variant as "7.0 pp for none, 12.0 pp for bn_before and ..."
    ("not measured" when every value is NaN)."""
    items = [f"{fmt(v)} for {variant}" for variant, v in values.dropna().items()]
    return join_words(items) if items else "not measured"
