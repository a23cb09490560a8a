"""`bnstudy plan STUDY --detect 1pp`: how many seeds each of a study's claims needs to
detect a given difference, from the spread its finished runs show.

For every claim of the study's report (bnstudy.stats.claims: the same family the report
adjusts), the planner takes the observed std of the paired differences and finds the
fewest pairs whose paired test detects `detect` with 80% power at Holm's strictest
threshold ALPHA / m (bnstudy.stats.contrasts.pairs_needed); pairs become seeds at the pairs
each seed gives in this study. It runs no training.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from bnstudy.report.analysis import Analysis
from bnstudy.stats.claims import ALPHA
from bnstudy.stats.contrasts import pairs_needed
from bnstudy.errors import UserError
from bnstudy.results.metrics import label
from bnstudy.report.wording import pp


def parse_difference(text: str) -> float:
    """ "1pp", "0.5 pp" -> 0.01, 0.005 (a fraction); "0.01" as it is. UserError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(pp)?\s*", text)
    if not match:
        raise UserError(f"--detect: give a difference such as 1pp or 0.01 (got {text!r})")
    value = float(match.group(1)) / (100 if match.group(2) else 1)
    if not 0 < value <= 1:
        raise UserError(f"--detect: the difference must be above 0 and at most 100 pp (got {text!r})")
    return value


def plan_table(a: Analysis, detect: float) -> pd.DataFrame:
    """One row per claim with a spread: compared, metric, n_pairs, n_seeds, sd (of the
    differences), seeds (needed to detect `detect`; NaN when no count up to the planner's
    limit would)."""
    claims = a.claims[a.claims["n_pairs"] > 1]
    m = int(a.claims["p"].notna().sum())
    rows = []
    for _, row in claims.iterrows():
        sd = row["sd"]
        pairs = pairs_needed(detect, sd, ALPHA / max(m, 1))
        per_seed = row["n_pairs"] / row["n_seeds"]
        rows.append({"compared": f"{row['a']} − {row['b']}" + (f" ({row['scope']})" if row["scope"] else ""),
                     "metric": label(row["metric"]), "n_pairs": row["n_pairs"], "n_seeds": row["n_seeds"], "sd": sd,
                     "seeds": math.nan if pairs is None else math.ceil(pairs / per_seed)})  # fmt: skip
    return pd.DataFrame(rows, columns=["compared", "metric", "n_pairs", "n_seeds", "sd", "seeds"])


def format_plan(a: Analysis, detect: float) -> str:
    """What `bnstudy plan` prints: the threshold, then one line per claim."""
    table = plan_table(a, detect)
    m = int(a.claims["p"].notna().sum())
    if table.empty:
        return f"study {a.study.name}: no claim has two pairs of runs or more, so there is no spread to plan from"
    lines = [f"study {a.study.name}: {m} claims; to detect {pp(detect)} with 80% power at Holm's strictest "
             f"threshold {ALPHA:g}/{m}, from the spread of the finished runs:"]  # fmt: skip
    width = max([len(c) for c in table["compared"]] + [8])
    for r in table.itertuples():
        seeds = "more than any study can run" if pd.isna(r.seeds) else f"{int(r.seeds)} seeds"
        lines.append(f"  {r.compared:<{width}}  {r.metric:<24} sd {pp(r.sd):>8} over {r.n_pairs:>3} pairs "
                     f"({r.n_seeds} seeds): {seeds}")  # fmt: skip
    return "\n".join(lines)

