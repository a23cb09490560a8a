"""How the report names settings, cells and numbers, in figure labels and in sentences."""

from __future__ import annotations

import math

import pandas as pd

from bnstudy.results.aggregate import CELL_KEYS
from bnstudy.config.settings import SETTINGS


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
    "training images all"."""
    return f"{SETTING_NAMES[key]} {value_text(key, value)}"


def extra_axes(frame: pd.DataFrame) -> list[str]:
    """The cell settings other than PLOT_AXES that take more than one value in `frame`."""
    return [k for k in CELL_KEYS if k not in PLOT_AXES and frame[k].nunique(dropna=False) > 1]


def md_safe(text) -> str:
    """Text from a run's files (a study name, a device) made inert in Markdown: control
    characters and newlines become spaces, so no heading or table can start; backticks,
    pipes and a leading "#" are escaped."""
    flat = "".join(" " if not ch.isprintable() else ch for ch in str(text))
    return flat.replace("`", "\\`").replace("|", "\\|").lstrip().removeprefix("#").strip() or "?"


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


def signed_pp(x: float) -> str:
    """A difference of fractions in signed percentage points: 0.012 -> "+1.2 pp"."""
    return f"{100 * x:+.1f} pp"


def p_text(p: float) -> str:
    """A p-value as the report prints it: "0.19", "0.049", "< 0.001", "–" for none. Below
    0.1 it is cut, not rounded, to 3 decimals, so that a p below 0.05 never prints as 0.050."""
    if pd.isna(p):
        return "–"
    if p < 0.001:
        return "< 0.001"
    return f"{math.floor(p * 1000) / 1000:.3f}" if p < 0.1 else f"{p:.2f}"


def interval_text(low: float, high: float) -> str:
    """A 95% interval of differences of fractions: "95% CI +0.4 to +2.0 pp"."""
    if pd.isna(low):
        return "no interval"
    return f"95% CI {100 * low:+.1f} to {signed_pp(high)}"


def seeds_text(row) -> str:
    """What a claims.csv row that is not a claim would need: "about 14 seeds would tell",
    or "no seed count would tell" when the observed difference is 0."""
    needed = row["seeds_needed"]
    return "no seed count would tell" if pd.isna(needed) else f"about {int(needed)} seeds would tell"


def contrast_text(row) -> str:
    """A claims.csv row's numbers: "+2.9 pp (95% CI -1.3 to +7.0 pp; n = 5, adjusted p 0.90)"."""
    return (f"{signed_pp(row['mean'])} ({interval_text(row['low'], row['high'])}; n = {row['n_pairs']}, "
            f"adjusted p {p_text(row['p_adjusted'])})")  # fmt: skip


def verdict_text(row) -> str:
    """A claims.csv row's verdict with what it would take: "no clear difference at n = 5;
    about 14 seeds would tell", "a higher" is the caller's to say."""
    if row["verdict"] in ("higher", "lower"):
        return row["verdict"]
    return f"{row['verdict']} at n = {row['n_pairs']}; {seeds_text(row)}"
