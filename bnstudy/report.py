"""Study report: a study's runs -> summary tables, figures and report.md.

    DIR/runs/<run_id>.csv + .json   input (bnstudy.store's layout)
    DIR/summary.csv                 one row per run: its settings and stability metrics
    DIR/cells.csv                   one row per grid cell (all settings but the seed)
    DIR/comparisons.csv             one row per pair of variants x stability metric: paired differences
    DIR/figures/<name>.png + .svg   the figures of bnstudy.figures.FIGURES
    DIR/report.md                   what was run, findings, ranked tables, the figures

The stages: bnstudy.aggregate reads the runs and computes the metrics and tables (its
docstring states the conventions), bnstudy.figures draws, bnstudy.findings writes the
sentences, bnstudy.wording names things; this module renders report.md and writes it all,
all or nothing (write_report).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from bnstudy.aggregate import (
    CELL_KEYS,
    CONFIG_KEYS,
    StudyResults,
    aggregate_cells,
    counts,
    load_results,
    missing_runs,
    summarize_runs,
)
from bnstudy.axis_findings import axis_findings
from bnstudy.comparisons import comparison_findings, comparison_table
from bnstudy.errors import UserError
from bnstudy.figures import FIGURES, UNDRAWN, draw_figures, save_figures
from bnstudy.findings import findings
from bnstudy.notebook import TABLE_COLUMNS, notebook_comparison
from bnstudy.store import DONE_STATUSES, atomic_write_text, check_writable, format_damaged
from bnstudy.wording import SETTING_NAMES, cell_text, extra_axes, join_words, plural, value_text


# ---------------------------------------------------------------- report.md
def md_table(frame: pd.DataFrame) -> str:
    """A Markdown table of `frame`'s columns (cells already formatted as text)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def mean_std(mean: float, std: float) -> str:
    """Fractions as "83.8 ± 1.2" (in % or pp, the table header says which); the mean alone
    without a std; "–" without a mean."""
    if pd.isna(mean):
        return "–"
    return f"{100 * mean:.1f}" + ("" if pd.isna(std) else f" ± {100 * std:.1f}")


def duration(seconds: float) -> str:
    """ "42 s", "3.5 min", "1.2 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def listing(values) -> str:
    """The distinct values with how many runs have each: "cpu (12), NVIDIA H100 (3)"; one value alone."""
    tally = pd.Series(values).fillna("unknown").astype(str).value_counts()
    return str(tally.index[0]) if len(tally) == 1 else ", ".join(f"{v} ({n})" for v, n in tally.items())


SKIPPED_STATES = {"failed": "failed", "damaged": "damaged", "pending": "without its JSON (in flight or killed)"}


def skipped_text(skipped: pd.DataFrame) -> str:
    """ "1 failed, 2 damaged, 1 without its JSON (in flight or killed)", or "none",
    from the skipped runs (StudyResults.skipped)."""
    counts = skipped["state"].value_counts()
    text = ", ".join(f"{counts[state]} {words}" for state, words in SKIPPED_STATES.items() if state in counts)
    return text or "none"


def damaged_runs(skipped: pd.DataFrame) -> list[tuple[str, str]]:
    """(run_id, reason) of each damaged run among the skipped ones."""
    damaged = skipped[skipped["state"] == "damaged"]
    return list(zip(damaged["run_id"], damaged["reason"]))


def what_was_run(study: StudyResults, summary: pd.DataFrame) -> list[str]:
    """Bullet lines: the grid, fixed settings, device and versions, run counts (the
    grid's, then damaged and extra runs), time."""
    values = {k: study.expected[k].drop_duplicates().sort_values().tolist() for k in CONFIG_KEYS}
    axes = [f"{k} ({', '.join(value_text(k, v) for v in vs)})" for k, vs in values.items() if len(vs) > 1]
    fixed = [f"{k} {value_text(k, vs[0])}" for k, vs in values.items() if len(vs) == 1]
    n_cells = study.expected.groupby(CELL_KEYS, dropna=False, observed=True).ngroups
    statuses = summary.loc[summary["run_id"].isin(study.expected["run_id"]), "status"].value_counts()
    span = pd.to_datetime(study.runs["ended"], utc=True).max() - pd.to_datetime(study.runs["started"], utc=True).min()
    return [
        f"**Grid**: {' × '.join(axes) or 'a single run'}: {len(study.expected)} runs in {n_cells} cells "
        f"({study.grid_source}).",
        f"**Fixed settings**: {', '.join(fixed) or 'none'}.",
        f"**Device**: {listing(study.runs['device'])}; torch {listing(study.runs['torch_version'])}, "
        f"bnstudy {listing(study.runs['bnstudy_version'])}, commit {listing(study.runs['git_commit'])}.",
        f"**Runs**: {statuses.sum()} of {len(study.expected)} done ({statuses.get('complete', 0)} complete, "
        f"{statuses.get('diverged', 0)} diverged); skipped: {skipped_text(study.skipped)}.",
        *damaged_bullet(study.skipped),
        *extra_bullet(study),
        f"**Time**: {duration(summary['train_seconds'].sum())} training + {duration(summary['eval_seconds'].sum())} "
        f"evaluation, summed over runs; {duration(span.total_seconds())} from the first start to the last end.",
    ]  # fmt: skip


def extra_text(study: StudyResults) -> str:
    """The extra runs (StudyResults.extra) in words, "" without any: "3 runs in runs/ not in
    spec.toml (2 complete, 1 failed), left out (`--include-extra` reports the done ones)"."""
    if study.extra.empty:
        return ""
    states = ", ".join(f"{n} {state}" for state, n in study.extra["state"].value_counts().items())
    done = int(study.extra["state"].isin(DONE_STATUSES).sum())
    fate = (f"the {done} done ones included" if study.extra_included else
            "left out (`--include-extra` reports the done ones)")  # fmt: skip
    return f"{plural(len(study.extra), 'run')} in runs/ not in spec.toml ({states}), {fate}"


def extra_bullet(study: StudyResults) -> list[str]:
    """The extra runs as one bullet line, or none without any."""
    if study.extra.empty:
        return []
    return [f"**Extra runs**: {extra_text(study)}. They belong to another version of the spec, e.g. one run "
            f"before a `--set` changed its settings."]  # fmt: skip


def damaged_bullet(skipped: pd.DataFrame) -> list[str]:
    """The damaged runs as one bullet line (the first few), or none without damaged runs."""
    damaged = damaged_runs(skipped)
    if not damaged:
        return []
    named = "; ".join(line.strip() for line in format_damaged(damaged))
    return [f"**Damaged runs**, left out (their files are not whole or disagree; `bnstudy sweep` sets them "
            f"aside in damaged/ and redoes them): {named}."]  # fmt: skip


def incomplete_cells(missing: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """One row per cell with missing runs: cell (in words), missing (seeds and why)."""
    rows = [{"cell": cell_text(runs.iloc[0], extra),
             "missing runs": ", ".join(f"seed {r['seed']} ({r['reason']})" for _, r in runs.iterrows())}
            for _, runs in missing.groupby(CELL_KEYS, dropna=False, observed=True)]  # fmt: skip
    return pd.DataFrame(rows, columns=["cell", "missing runs"])


def ranked_table(cells: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """One variant's cells ranked by mean final accuracy (cells without runs last), as text."""
    cells = cells.sort_values("final_acc_mean", ascending=False, na_position="last")
    table = pd.DataFrame({"rank": [str(i + 1) if n else "–" for i, n in enumerate(cells["n"])]})
    for key in ["lr", "batch_size", *extra]:
        table[SETTING_NAMES.get(key, key)] = [value_text(key, v) for v in cells[key]]
    table["runs"] = [f"{n} of {e}" for n, e in zip(cells["n"], cells["n_expected"])]
    columns = {"final_acc": "final acc (%)", "best_acc": "best acc (%)", "mean_abs_change": "mean abs change (pp)",
               "worst_drop": "worst drop (pp)", "late_std": "late std (pp)", "gen_gap": "gen gap (pp)",
               "ema_gap": "PreciseBN gain (pp)"}  # fmt: skip
    if not cells["ema_gap_mean"].notna().any():
        columns.pop("ema_gap")  # `none` has no BN statistics to recompute
    for metric, title in columns.items():
        table[title] = [mean_std(m, sd) for m, sd in zip(cells[f"{metric}_mean"], cells[f"{metric}_std"])]
    table["diverged"] = cells["n_diverged"].astype(str).to_numpy()
    table["stuck"] = cells["n_stuck"].astype(str).to_numpy()
    return table


def window_table(table: pd.DataFrame) -> pd.DataFrame:
    """The notebook section's table (notebook.comparison_table) as report.md shows it: % and
    pp to one decimal, "–" where not measured (the notebook's logs have no PreciseBN or points)."""
    shown = table.map(lambda v: "–" if pd.isna(v) else f"{100 * v:.1f}").rename(columns=TABLE_COLUMNS)
    return shown.reset_index(names="source")


def render_report(study: StudyResults, summary: pd.DataFrame, cells: pd.DataFrame, missing: pd.DataFrame,
                  figures: list[str], comparisons: pd.DataFrame) -> str:  # fmt: skip
    """report.md's text. `missing`: incomplete_cells(...); `figures`: the names of the
    figures written under figures/; `comparisons`: comparison_table(summary)."""
    extra = extra_axes(cells)
    epochs = study.epochs[counts(study.epochs)]
    parts = [f"# Batch-normalization stability report: study `{study.name}`",
             "Accuracies in percent (%), changes in percentage points (pp); ± is the standard deviation over "
             "seeds. Written by `bnstudy report` from the run files; every number and sentence below is "
             "computed from them.",
             "## What was run", "\n".join(f"- {line}" for line in what_was_run(study, summary))]  # fmt: skip
    if len(missing):
        parts += ["## Incomplete cells", f"{len(missing)} of {len(cells)} cells lack runs:", md_table(missing)]
    parts += ["## Findings", "\n".join(f"- {sentence}" for sentence in findings(summary, cells, epochs))]
    if len(comparisons):
        parts += ["## Paired comparisons between variants", CONTRASTS_NOTE + " Runs stuck at chance are left out.",
                  "\n".join(f"- {sentence}" for sentence in comparison_findings(comparisons))]  # fmt: skip
    about_axes = axis_findings(summary)
    if about_axes:
        parts += [f"## What {axes_studied(summary)} change{'s' if ' and ' not in axes_studied(summary) else ''}",
                  CONTRASTS_NOTE,
                  "\n".join(f"- {sentence}" for sentence in about_axes)]  # fmt: skip
    comparison = notebook_comparison(epochs, study.points)
    if comparison is not None:
        sentences, table = comparison
        parts += ["## The reference notebook's test-accuracy swings", " ".join(sentences), md_table(window_table(table))]
    parts.append("## Cells ranked by final accuracy, per variant")
    for variant, block in cells.groupby("variant", observed=True):
        parts += [f"### {variant}", md_table(ranked_table(block, extra))]
    parts.append("## Figures")
    if not figures:
        parts.append("None: no run has an epoch with finite loss and accuracy.")
    for i, name in enumerate(figures, 1):
        heading, caption = FIGURES[name]
        parts += [f"### {i}. {heading}", f"![{heading}](figures/{name}.png)",
                  f"{caption} Also as [SVG](figures/{name}.svg)."]  # fmt: skip
    undrawn = [f"{FIGURES[name][0]}: {UNDRAWN[name]}" for name in FIGURES if figures and name not in figures]
    if undrawn:
        parts.append(f"Not drawn: {'; '.join(undrawn)}.")
    parts += ["## Files and conventions", FILES_NOTE]
    return "\n\n".join(parts) + "\n"


def axes_studied(summary: pd.DataFrame) -> str:
    """ "BN momentum", "the activation" or both: the axes of axis_findings the study varies."""
    named = {"bn_momentum": "BN momentum", "activation": "the activation"}
    return join_words([words for key, words in named.items() if summary[key].nunique() > 1])


CONTRASTS_NOTE = ("Each difference pairs runs that differ in that one setting only, seed included; the interval is "
                  "a bootstrap 95% interval over the pairs, and a difference is claimed only when it excludes 0.")
FILES_NOTE = """\
- `summary.csv`: one row per run: its settings, status, `diverged`, `stuck` (best test
  accuracy below 20%: it never left chance), `epochs_used`, the stability metrics
  (fractions, not %), and the training/evaluation seconds.
- `cells.csv`: one row per grid cell (all settings but the seed): `n` runs of `n_expected`,
  `n_diverged`, `n_stuck`, `seed_std`, and `<metric>_mean` / `<metric>_std` over seeds; the
  volatility metrics (mean |change|, worst drop, late std) over the runs that are not stuck.
- `comparisons.csv`: one row per pair of variants and metric: `a`, `b`, `metric`, `n_pairs`,
  and over the pairs of runs that differ in the variant only (same cell and seed, stuck runs
  left out) the `mean`, bootstrap 95% interval (`low`, `high`) of metric(a) − metric(b)
  (fractions), the pairs where a is `above` / `below` b, and the `verdict` in words.
- A run's metrics use its epochs whose loss and accuracy are finite: a diverged run counts up
  to its last finite epoch and is flagged.
- `late_std` is the population standard deviation of the last ceil(E/2) epochs; spreads over
  seeds are sample standard deviations.
- The `*_precise_bn` and `*_batch_stats` metrics are the same stability metrics of the test
  accuracy measured with PreciseBN and with test-batch statistics.
- Which curve a number is from: the `fine_*` metrics are from the fine curve, every point of
  `runs/<run_id>.evals.csv` (k per epoch; NaN for a run evaluated once an epoch), their
  mean |change| per point step; every other metric and table is from the epoch ends."""


@dataclasses.dataclass
class Outputs:
    """What write_report wrote, and what the CLI says about it."""

    summary_csv: Path
    cells_csv: Path
    figures: list[Path]
    report_md: Path
    runs: int
    skipped: pd.DataFrame  # StudyResults.skipped
    incomplete: pd.DataFrame  # incomplete_cells(...)
    extra: str  # extra_text(...)


def write_report(root: str | os.PathLike, include_extra: bool = False) -> Outputs:
    """Load the study in `root` (its spec's runs, and with `include_extra` the other done
    runs there too) and write summary.csv, cells.csv, figures/ and report.md there.

    All or nothing: the files are written into a hidden staging folder in `root` and moved
    into place only once all of them were written and every destination was checked, so a
    failure (UserError: one line) leaves the previous report's files as they were. Figures
    of FIGURES that this report does not draw are removed from figures/ (a previous
    report's, which report.md would not show). UserError too when there is nothing to
    report or `root` is not writable."""
    study = load_results(root, include_extra)
    check_writable(study.root)
    summary = summarize_runs(study)
    cells = aggregate_cells(summary, study.expected)
    comparisons = comparison_table(summary)
    incomplete = incomplete_cells(missing_runs(study), extra_axes(cells))
    try:
        with staging_folder(study.root) as stage:
            drawn = [png.stem for png in save_figures(draw_figures(study, summary, cells), stage / "figures")]
            texts = {"summary.csv": summary.to_csv(index=False), "cells.csv": cells.to_csv(index=False),
                     "comparisons.csv": comparisons.to_csv(index=False),
                     "report.md": render_report(study, summary, cells, incomplete, drawn, comparisons)}  # fmt: skip
            for name, text in texts.items():
                atomic_write_text(stage / name, text)
            # report.md last: it links the figures, which must be there before it
            staged = [f"figures/{name}{suffix}" for name in drawn for suffix in (".png", ".svg")] + list(texts)
            publish(stage, study.root, staged)
            remove_undrawn_figures(study.root / "figures", drawn)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise UserError(f"{study.root}: cannot write the report ({exc.strerror or exc}{where})") from None
    return Outputs(study.root / "summary.csv", study.root / "cells.csv",
                   [study.root / "figures" / f"{name}.png" for name in drawn], study.root / "report.md",
                   len(summary), study.skipped, incomplete, extra_text(study))  # fmt: skip


@contextlib.contextmanager
def staging_folder(root: Path):
    """A new hidden folder `root`/.report-*, removed with whatever is left in it on exit.
    (Not named *.tmp: a sweep deletes its own stale `.*.tmp` files, and this is a folder.)"""
    stage = Path(tempfile.mkdtemp(dir=root, prefix=".report-"))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, root: Path, names: list[str]) -> None:
    """Move each staged file `stage`/<name> to `root`/<name>, in the order of `names`
    (relative paths). UserError before the first move when a destination is taken by a
    folder, or its folder by a file; a move can then fail only if `root` changes meanwhile."""
    for name in names:
        target = root / name
        if target.parent.exists() and not target.parent.is_dir():
            raise UserError(f"{target.parent}: a file where the report writes its {target.parent.name}/ folder; "
                            f"move it away")  # fmt: skip
        if target.is_dir():
            raise UserError(f"{target}: a folder where the report writes a file; move it away")
    for name in names:
        (root / name).parent.mkdir(exist_ok=True)
        os.replace(stage / name, root / name)


def remove_undrawn_figures(directory: Path, drawn: list[str]) -> None:
    """Delete directory/<name>.png and .svg of each FIGURES name not in `drawn`, where present."""
    if not directory.is_dir():
        return
    for name in FIGURES.keys() - set(drawn):
        for suffix in (".png", ".svg"):
            (directory / f"{name}{suffix}").unlink(missing_ok=True)


def format_outputs(out: Outputs) -> str:
    """What `bnstudy report` prints: what was reported and skipped (damaged runs by name, a
    few), the extra runs, the incomplete cells, the files written."""
    lines = [f"{out.runs} runs reported; skipped: {skipped_text(out.skipped)}"]
    if damaged := damaged_runs(out.skipped):
        lines += ["damaged runs, left out (`bnstudy sweep` sets them aside and redoes them):", *format_damaged(damaged)]
    if out.extra:
        lines.append(f"extra: {out.extra}")
    lines += [f"incomplete: {row['cell']}: missing {row['missing runs']}" for _, row in out.incomplete.iterrows()]
    lines.append(f"wrote {out.summary_csv}, {out.cells_csv}")
    if out.figures:  # none when every run diverged in its first epoch
        lines.append(f"wrote {len(out.figures)} figures (PNG and SVG) in {out.figures[0].parent}")
    lines.append(f"wrote {out.report_md}")
    return "\n".join(lines)
