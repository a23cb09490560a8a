"""Study report: a study's runs -> tables, claims, figures and report.md.

    DIR/runs/<run_id>.csv + .json   input (bnstudy.results.store's layout)
    DIR/summary.csv                 one row per run: its settings and metrics
    DIR/cells.csv                   one row per grid cell (all settings but the seed)
    DIR/claims.csv                  every claim the report makes, decided together (bnstudy.stats.claims)
    DIR/comparisons.csv             its rows comparing the variants (bnstudy.report.comparisons)
    DIR/figures/<name>.png          the figures of bnstudy.report.figures.FIGURES
    DIR/report.md                   the answer first, then what was run, tables, figures

The stages: bnstudy.results.aggregate reads the runs and computes the metrics; bnstudy.report.analysis
computes everything the report says once (an Analysis); bnstudy.report.figures draws it; this
module renders report.md from it; bnstudy.report.publish writes it all, all or nothing.
"""

from __future__ import annotations

import math

import pandas as pd

from bnstudy.config.settings import BY_NAME
from bnstudy.results.aggregate import CELL_KEYS, CONFIG_KEYS, StudyResults
from bnstudy.report.analysis import Analysis
from bnstudy.report.axis_findings import ACTIVATION, MOMENTUM, activation_findings, momentum_findings
from bnstudy.stats.claims import ALPHA, Verdict
from bnstudy.stats.contrasts import EXACT, EXACT_UP_TO, MC_RESAMPLES, NO_TEST
from bnstudy.report.comparisons import COMPARISON, comparable_runs
from bnstudy.sweep.costs import format_duration
from bnstudy.report.figures import FIGURES, UNDRAWN
from bnstudy.report.findings import (
    PRECISE_BN,
    diverged_text,
    statistics_headers,
    still_learning_text,
    stuck_text,
)
from bnstudy.results.metrics import header, label
from bnstudy.report.notebook import TABLE_COLUMNS
from bnstudy.report.remedies import POOLING, REMEDY
from bnstudy.results.runfiles import RunState, RunStatus
from bnstudy.results.store import format_damaged
from bnstudy.report.wording import (
    SETTING_NAMES,
    cell_text,
    contrast_text,
    join_words,
    md_safe,
    p_text,
    plural,
    pp,
    setting_text,
    signed_pp,
    value_text,
    verdict_text,
)


# ---------------------------------------------------------------- report.md
def md_table(frame: pd.DataFrame) -> str:
    """A Markdown table of `frame`'s columns (cells already formatted as text; a "|" in
    one, as in "mean |change|", is escaped so that it does not split the cell)."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def bullets(lines: list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def mean_std(mean: float, std: float) -> str:
    """Fractions as "83.8 ± 1.2" (in % or pp, the table header says which); the mean alone
    without a std; "–" without a mean."""
    if pd.isna(mean):
        return "–"
    return f"{100 * mean:.1f}" + ("" if pd.isna(std) else f" ± {100 * std:.1f}")


def listing(values) -> str:
    """The distinct values with how many runs have each: "cpu (12), NVIDIA H100 (3)"; one value alone."""
    tally = pd.Series(values).fillna("unknown").map(md_safe).value_counts()
    return str(tally.index[0]) if len(tally) == 1 else ", ".join(f"{v} ({n})" for v, n in tally.items())


SKIPPED_STATES = {RunState.FAILED: "failed", RunState.DAMAGED: "damaged",
                  RunState.PENDING: "without its JSON (in flight or killed)"}  # fmt: skip


def skipped_text(skipped: pd.DataFrame) -> str:
    """ "1 failed, 2 damaged, 1 without its JSON (in flight or killed)", or "none",
    from the skipped runs (StudyResults.skipped)."""
    counts = skipped["state"].value_counts()
    text = ", ".join(f"{counts[state]} {words}" for state, words in SKIPPED_STATES.items() if state in counts)
    return text or "none"


def damaged_runs(skipped: pd.DataFrame) -> list[tuple[str, str]]:
    """(run_id, reason) of each damaged run among the skipped ones."""
    damaged = skipped[skipped["state"] == RunState.DAMAGED]
    return list(zip(damaged["run_id"], damaged["reason"]))


# ---------------------------------------------------------------- 1. title and question
def question(a: Analysis) -> str:
    """What the study asks, from what it varies: "How stable is test accuracy for none,
    bn_before and bn_after across learning rate and batch size?"."""
    values = {k: a.study.expected[k].drop_duplicates() for k in CONFIG_KEYS if k not in ("variant", "seed")}
    axes = [SETTING_NAMES[k] for k, vs in values.items() if len(vs) > 1]
    variants = join_words([str(v) for v in a.study.expected["variant"].drop_duplicates().sort_values()])
    across = f" across {join_words(axes)}" if axes else ""
    return f"How stable is the test accuracy of {variants}{across}, and how sure can we be?"


# ---------------------------------------------------------------- 2. summary
def worst_drop_bullet(row: pd.Series) -> str:
    """A worst-drop comparison (claims.csv row) as the summary says it."""
    verdict = Verdict(row["verdict"])
    if verdict.clear:
        way = "falls further than" if verdict is Verdict.HIGHER else "falls less far than"
        return f"**{row['a']} {way} {row['b']}**: worst drop {contrast_text(row)}."
    return f"**{row['a']} vs {row['b']}: {verdict_text(row)}**, worst drop {contrast_text(row)}."


def precise_bn_bullet(row: pd.Series, statistics: pd.DataFrame) -> str:
    """A PreciseBN claim (claims.csv row) with the share of the worst drop it removes."""
    variant = row["scope"].removeprefix("variant ")
    stats = statistics.loc[variant]
    levels = f"{pp(stats['worst_drop'])} → {pp(stats['worst_drop_precise_bn'])}"
    if Verdict(row["verdict"]) is Verdict.LOWER and pd.notna(stats["removed"]):
        return (f"**PreciseBN removes {stats['removed']:.0%} of {variant}'s worst drop** ({levels}): "
                f"{contrast_text(row)}, so the running statistics carry it.")  # fmt: skip
    return f"**PreciseBN on {variant}: {verdict_text(row)}** ({levels}): {contrast_text(row)}."


MAX_SUMMARY = 6


def summary_bullets(a: Analysis) -> list[str]:
    """The study's answers, most important first, at most MAX_SUMMARY: the worst-drop
    comparisons, PreciseBN's, the axis answers, the notebook verdicts."""
    claims = a.claims
    drops = claims[(claims["family"] == COMPARISON) & (claims["metric"] == "worst_drop")]
    out = [worst_drop_bullet(row) for _, row in drops.iterrows()]
    out += [precise_bn_bullet(row, a.statistics) for _, row in claims[claims["family"] == PRECISE_BN].iterrows()]
    out += remedy_bullets(claims)
    out += [f"**BN momentum**, {s}" for s in momentum_findings(claims)]
    activation = activation_findings(claims)
    out += [f"**Activation**: {activation[-1]}"] if activation else []
    if a.notebook.absent is None:
        verdicts = join_words([f"log {log} {word}" for log, word in a.notebook.verdicts.items()])
        out.append(f"**The notebook's swings**: {verdicts} (section below).")
    if not out:
        return ["Nothing to compare: a claim needs runs of two variants (or settings) that pair by cell and seed, "
                "each with two counted epochs or more and past chance (best test accuracy 20% or more)."]
    return out[:MAX_SUMMARY]


def remedy_bullets(claims: pd.DataFrame) -> list[str]:
    """The remedies' answer in at most three bullets: which clearly lower bn_before's worst
    drop, which are not clearly steadier or less steady than PreciseBN, and the pooling."""
    rows = claims[claims["family"] == REMEDY]
    out = []
    drops = rows[(rows["metric"] == "worst_drop") & ~rows["b"].str.endswith("PreciseBN")]
    if len(drops):
        lower = drops[drops["verdict"] == Verdict.LOWER.value]
        named = join_words([f"{r['a']} ({signed_pp(r['mean'])}, adjusted p {p_text(r['p_adjusted'])})"
                            for _, r in lower.iterrows()]) if len(lower) else "none"  # fmt: skip
        out.append(f"**Remedies that clearly lower bn_before's worst drop** (n = {drops['n_pairs'].max()}): {named}.")
    steady = rows[rows["b"].str.endswith("PreciseBN")]
    if len(steady):
        worse = steady[steady["verdict"] == Verdict.HIGHER.value]
        still = join_words(list(worse["a"])) if len(worse) else "none"
        out.append(f"**Still less steady than PreciseBN on BatchNorm** (worst drop clearly higher): {still}.")
    pooling = claims[(claims["family"] == POOLING) & (claims["axis"] == "pool") & (claims["n_pairs"] > 0)]
    for _, row in pooling.iterrows():
        out.append(f"**The pooling confound**: bn_before's gain over none in final accuracy, average minus max "
                   f"pooling, {contrast_text(row)}: {verdict_text(row)}.")  # fmt: skip
    return out


def lead_figure(a: Analysis, figures: list[str]) -> str | None:
    """The figure that shows the answer best: the notebook window when the study reaches it,
    else the remedies' (a remedies study), else the paired comparisons; None when none is drawn."""
    for name in ("notebook_window", "remedies", "comparisons"):
        if name in figures:
            return name
    return None


# ---------------------------------------------------------------- 3. what was run
def fixed_settings(expected: pd.DataFrame) -> dict:
    """{setting: its one value} for each run setting (CONFIG_KEYS) that has one value over
    the runs `expected` (one row each) and means something for at least one of them: a
    study of `none` alone has BN momentum 0.1 everywhere, but no BatchNorm for it to set
    (Setting.inapplicable)."""
    rows = [dict(zip(CONFIG_KEYS, row)) for row in expected[CONFIG_KEYS].itertuples(index=False)]
    fixed = {}
    for key in CONFIG_KEYS:
        values = expected[key].drop_duplicates()
        inapplicable = BY_NAME[key].inapplicable
        if len(values) == 1 and (inapplicable is None or any(inapplicable(row) is None for row in rows)):
            fixed[key] = values.iloc[0]
    return fixed


def what_was_run(a: Analysis) -> list[str]:
    """Bullet lines: the grid, fixed settings (named as the sentences name them), device and
    versions, run counts (the grid's, damaged, extra, stuck, diverged), time."""
    study, summary = a.study, a.summary
    values = {k: study.expected[k].drop_duplicates().sort_values().tolist() for k in CONFIG_KEYS}
    axes = [f"{SETTING_NAMES[k]} ({', '.join(value_text(k, v) for v in vs)})"
            for k, vs in values.items() if len(vs) > 1]  # fmt: skip
    fixed = [setting_text(k, v) for k, v in fixed_settings(study.expected).items()]
    statuses = summary.loc[summary["run_id"].isin(study.expected["run_id"]), "status"].value_counts()
    span = pd.to_datetime(study.runs["ended"], utc=True).max() - pd.to_datetime(study.runs["started"], utc=True).min()
    product = math.prod(len(vs) for vs in values.values())
    shape = (" × ".join(axes) or "a single run") if product == len(study.expected) else \
        f"arms, not their full product, over {' × '.join(axes)}"  # fmt: skip
    return [
        f"**Grid**: {shape}: {plural(len(study.expected), 'run')} in {plural(a.n_cells, 'cell')} "
        f"({study.grid_source}).",
        f"**Fixed settings**: {', '.join(fixed) or 'none'}.",
        f"**Device**: {listing(study.runs['device'])}; torch {listing(study.runs['torch_version'])}, "
        f"bnstudy {listing(study.runs['bnstudy_version'])}, commit {listing(study.runs['git_commit'])}.",
        f"**Runs**: {statuses.sum()} of {len(study.expected)} done ({statuses.get(RunStatus.COMPLETE, 0)} complete, "
        f"{statuses.get(RunStatus.DIVERGED, 0)} diverged); skipped: {skipped_text(study.skipped)}.",
        *damaged_bullet(study.skipped),
        *extra_bullet(study),
        *[text for text in (stuck_text(summary, a.extra),) if text],
        diverged_text(summary, a.extra),
        f"**Time**: {format_duration(summary['train_seconds'].sum())} training + "
        f"{format_duration(summary['eval_seconds'].sum())} evaluation, summed over runs; "
        f"{format_duration(span.total_seconds())} from the first start to the last end.",
    ]  # fmt: skip


def extra_text(study: StudyResults) -> str:
    """The extra runs (StudyResults.extra) in words, "" without any: "3 runs in runs/ not in
    spec.toml (2 complete, 1 failed), left out (`--include-extra` reports the done ones)"."""
    if study.extra.empty:
        return ""
    states = ", ".join(f"{n} {state}" for state, n in study.extra["state"].value_counts().items())
    done = int(study.extra["state"].map(lambda state: RunState(state).is_done()).sum())
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


# ---------------------------------------------------------------- 4. and 5. claims
def claims_md(rows: pd.DataFrame, subject) -> str:
    """claims.csv rows as a Markdown table; `subject(row)` names what each compares."""
    table = pd.DataFrame({
        "compared": [subject(r) for _, r in rows.iterrows()],
        "metric": [label(m) for m in rows["metric"]],
        "n": rows["n_pairs"].astype(str),
        "mean (pp)": ["–" if pd.isna(m) else f"{100 * m:+.1f}" for m in rows["mean"]],  # NaN: no pairs
        "95% CI (pp)": ["–" if pd.isna(lo) else f"{100 * lo:+.1f} to {100 * hi:+.1f}"
                        for lo, hi in zip(rows["low"], rows["high"])],
        "p": [p_text(p) for p in rows["p"]],
        "adjusted p": [p_text(p) for p in rows["p_adjusted"]],
        "verdict": [verdict_cell(r) for _, r in rows.iterrows()],
        "detectable (pp)": ["–" if pd.isna(d) else "none at this n" if d == float("inf") else f"{100 * d:.1f}"
                            for d in rows["detectable"]],
    })  # fmt: skip
    return md_table(table)


def verdict_cell(row: pd.Series) -> str:
    """A claims.csv row's verdict in a table: "higher", "no clear difference (~14 seeds)"."""
    if Verdict(row["verdict"]).clear or pd.isna(row["seeds_needed"]):
        return row["verdict"]
    return f"{row['verdict']} (~{int(row['seeds_needed'])} seeds)"


def pair_name(row: pd.Series) -> str:
    return f"{row['a']} − {row['b']}" + (f" ({row['scope']})" if row["scope"] else "")


def method_words(methods: pd.Series) -> str:
    """The claims' tests in words, from claims.csv's `method` column: exact, Monte Carlo
    (above contrasts.EXACT_UP_TO pairs), or both."""
    tested = set(methods) - {NO_TEST}
    exact, drawn = EXACT in tested, bool(tested - {EXACT})
    random = f"over {MC_RESAMPLES:,} random sign patterns"
    if exact and drawn:
        return f"sign-flip tests (exact up to {EXACT_UP_TO} pairs, {random} above)"
    return f"sign-flip tests {random}" if drawn else "exact sign-flip tests"


def claims_note(a: Analysis) -> str:
    """What the comparisons table cannot say, in at most three sentences."""
    m = int(a.claims["p"].notna().sum())
    return (f"Each row pairs runs that differ in the variant only (same cell and seed; runs stuck at chance left "
            f"out). The p-values are {method_words(a.claims['method'])}, Holm-adjusted over all {m} claims of this "
            f"report; a claim needs adjusted p below {ALPHA:g} and a mean that does not round to 0.0 pp (the "
            f"interval, a paired t one, shows the size and can disagree with the test near the edge). 'detectable' "
            f"is the smallest true difference those pairs find with 80% power at Holm's strictest threshold, and "
            f"'~N seeds' how many would find the observed one.")  # fmt: skip


def axis_sections(a: Analysis) -> list[str]:
    """The BN momentum and activation sections, each a few sentences and its claims' table."""
    parts = []
    for family, title, sentences in ((MOMENTUM, "BN momentum", momentum_findings(a.claims)),
                                     (ACTIVATION, "The activation", activation_findings(a.claims))):  # fmt: skip
        rows = a.claims[a.claims["family"] == family]
        if rows.empty:
            continue
        parts += [f"## {title}", bullets(sentences), claims_md(rows, pair_name)]
    return parts


def remedies_section(a: Analysis) -> list[str]:
    """The remedies' claims, the pooling confound and training time per epoch, as tables."""
    rows = a.claims[a.claims["family"].isin([REMEDY, POOLING])]
    if rows.empty:
        return []
    times = pd.DataFrame({"arm": a.times["arm"], "runs": a.times["runs"].astype(str),
                          "train s/epoch": [f"{s:.2f}" for s in a.times["seconds"]]})  # fmt: skip
    return ["## Remedies: which removes the swings, at what price?",
            "Each remedy changes one setting of bn_before (BatchNorm, momentum 0.1, max pooling) and pairs its runs "
            "with the baseline's by seed. 'with PreciseBN' compares the remedy's eval-mode worst drop with the "
            "baseline's after re-estimating its statistics: the steadiness a remedy could reach.",
            claims_md(rows, pair_name), md_table(times),
            "Seconds per epoch from the runs' own rows, so an arm whose runs shared the machine with other work reads "
            "slower than it is; bench/bench_remedies.py times the arms' training steps side by side."]  # fmt: skip


def statistics_section(a: Analysis) -> list[str]:
    """Which BN statistics carry the swings: the table and PreciseBN's claims."""
    if a.statistics.empty:
        return []
    headers = statistics_headers()
    shown = pd.DataFrame({"variant": a.statistics.index.astype(str)})
    for column, title in headers.items():
        values = a.statistics[column].to_numpy()
        shown[title] = (values.astype(int).astype(str) if column == "runs" else
                        ["–" if pd.isna(v) else f"{v:.0%}" for v in values] if column == "removed" else
                        ["–" if pd.isna(v) else f"{100 * v:.1f}" for v in values])  # fmt: skip
    rows = a.claims[a.claims["family"] == PRECISE_BN]
    return ["## BN statistics: running averages or the weights?",
            "Eval mode normalises with the running statistics; PreciseBN re-estimates them for the same weights, "
            "and test-batch statistics use each test batch's own. Means over the runs that left chance.",
            md_table(shown), claims_md(rows, pair_name)]  # fmt: skip


# ---------------------------------------------------------------- 6. the notebook
def window_table(table: pd.DataFrame) -> pd.DataFrame:
    """The notebook section's table (notebook.comparison_table) as report.md shows it: % and
    pp to one decimal, "–" where not measured (the notebook's logs have no PreciseBN or points)."""
    shown = table.map(lambda v: "–" if pd.isna(v) else f"{100 * v:.1f}").rename(columns=TABLE_COLUMNS)
    return shown.reset_index(names="source")


def notebook_part(a: Analysis) -> list[str]:
    section = a.notebook
    if section.absent is not None:
        return [f"*No comparison with the reference notebook's logs: {section.absent}.*"]
    return ["## The reference notebook's test-accuracy swings", " ".join(section.sentences),
            md_table(window_table(section.table))]  # fmt: skip


# ---------------------------------------------------------------- 7. cells, figures, files
CELL_TABLE_METRICS = ["final_acc", "best_acc", "mean_abs_change", "worst_drop", "late_std", "gen_gap", "ema_gap"]


def cell_table(cells: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """One variant's cells, best mean final accuracy first (cells without runs last), as text."""
    cells = cells.sort_values("final_acc_mean", ascending=False, na_position="last")
    table = pd.DataFrame({SETTING_NAMES[key]: [value_text(key, v) for v in cells[key]]
                          for key in ["lr", "batch_size", *extra]})  # fmt: skip
    table["runs"] = [f"{n} of {e}" for n, e in zip(cells["n"], cells["n_expected"])]
    metrics = [m for m in CELL_TABLE_METRICS if m != "ema_gap" or cells["ema_gap_mean"].notna().any()]
    for metric in metrics:  # `none` has no BN statistics to recompute: no PreciseBN gain
        table[header(metric)] = [mean_std(m, sd) for m, sd in zip(cells[f"{metric}_mean"], cells[f"{metric}_std"])]
    table["diverged"] = cells["n_diverged"].astype(str).to_numpy()
    table["stuck"] = cells["n_stuck"].astype(str).to_numpy()
    return table


def figures_part(figures: list[str], skip: str | None) -> list[str]:
    parts = ["## Figures"]
    if not figures:
        parts.append("None: no run has an epoch with finite loss and accuracy.")
    for i, name in enumerate(figures, 1):
        heading, caption = FIGURES[name]
        where = " (also in the summary)" if name == skip else ""
        parts += [f"### {i}. {heading}{where}", f"![{heading}](figures/{name}.png)", caption]
    undrawn = [f"{FIGURES[name][0]}: {UNDRAWN[name]}" for name in FIGURES if figures and name not in figures]
    if undrawn:
        parts.append(f"Not drawn: {'; '.join(undrawn)}.")
    return parts


def render_report(a: Analysis, figures: list[str]) -> str:
    """report.md's text, in the order of docs/DESIGN.md ("The report"). `figures`: the
    names of the figures written under figures/."""
    lead = lead_figure(a, figures)
    parts = [f"# Study {md_safe(a.study.name)}", question(a), "## Summary", bullets(summary_bullets(a))]
    if lead:
        parts.append(f"![{FIGURES[lead][0]}](figures/{lead}.png)")
    parts += ["## What was run", bullets(what_was_run(a))]
    incomplete = incomplete_cells(a.missing, a.extra)
    if len(incomplete):
        parts += [f"{len(incomplete)} of {len(a.cells)} cells lack runs:", md_table(incomplete)]
    comparisons = a.claims[a.claims["family"] == COMPARISON]
    if len(comparisons):
        parts += ["## Paired comparisons between variants", claims_md(comparisons, pair_name), claims_note(a)]
        if text := still_learning_text(a.epochs[a.epochs["run_id"].isin(comparable_runs(a.summary)["run_id"])]):
            parts.append(text)
    parts += [*remedies_section(a), *axis_sections(a), *statistics_section(a), *notebook_part(a)]
    if a.cells_per_variant > 1:
        parts.append("## Per cell (mean ± std over seeds; accuracies in %, changes in pp)")
        for variant, block in a.cells.groupby("variant", observed=True):
            parts += [f"### {variant}", md_table(cell_table(block, a.extra))]
    parts += [*figures_part(figures, lead), "## Files and conventions", FILES_NOTE]
    return "\n\n".join(parts) + "\n"


FILES_NOTE = """\
- Accuracies in percent (%), differences and spreads in percentage points (pp); the CSVs
  hold fractions. Every number and sentence here is computed from the run files.
- `summary.csv`: one row per run: its settings, status, `diverged`, `stuck` (best test
  accuracy below 20%: it never left chance), `epochs_used`, the metrics, and the
  training/evaluation seconds.
- `cells.csv`: one row per grid cell (all settings but the seed): `n` runs of `n_expected`,
  `n_diverged`, `n_stuck`, `seed_std`, and `<metric>_mean` / `<metric>_std` over seeds; the
  volatility metrics over the runs that are not stuck.
- `claims.csv`: every claim or non-claim this report makes: `family` (its section), `axis`,
  `a`, `b`, `scope`, `metric`, `n_pairs`, `n_seeds`, `mean`, `sd`, `low`, `high` (paired t
  95% interval of metric(a) − metric(b)), `above`, `below`, `ties`, `method`, `p` (sign-flip
  test), `p_adjusted` (Holm, over the whole report), `verdict`, `detectable` (smallest
  difference found with 80% power), `seeds_needed`. `comparisons.csv` is its comparison rows.
- A run's metrics use its epochs whose loss and accuracy are finite: a diverged run counts up
  to its last finite epoch and is flagged.
- `late_std` is the population standard deviation of the last ceil(E/2) epochs; spreads over
  seeds are sample standard deviations.
- The `*_precise_bn` and `*_batch_stats` metrics are the same metrics of the test accuracy
  measured with PreciseBN and with test-batch statistics; the `fine_*` ones are from every
  point of `runs/<run_id>.evals.csv` (k per epoch; NaN for a run evaluated once an epoch)."""
