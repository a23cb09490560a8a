"""A study's whole analysis, computed once: the typed result the report renders.

    analyze(study) -> Analysis: runs (summary), cells, every claim decided together
    (claims.csv, comparisons.csv is a view of it), the BN-statistics table, the notebook
    comparison, and which runs were left out and why.

Figures, tables and sentences are rendered from an Analysis (bnstudy.report.render,
bnstudy.report.figures); nothing there recomputes a statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bnstudy.results.aggregate import CELL_KEYS, StudyResults, aggregate_cells, counts, missing_runs, summarize_runs
from bnstudy.report.axis_findings import axis_claims
from bnstudy.stats.claims import decide
from bnstudy.report.comparisons import comparison_claims, comparison_table
from bnstudy.report.findings import precise_bn_claims, statistics_table
from bnstudy.report.notebook import NotebookSection, notebook_section
from bnstudy.report.remedies import pooling_claims, remedy_claims, time_table
from bnstudy.report.wording import extra_axes


@dataclass(frozen=True)
class Analysis:
    """What a report says, as data. summary: summary.csv; cells: cells.csv; epochs: the
    counted epoch rows; claims: claims.csv (bnstudy.stats.claims.decide over every claim);
    statistics: findings.statistics_table; times: remedies.time_table; notebook: the notebook comparison (its `absent`
    says why there is none); missing: aggregate.missing_runs; extra: the settings beside
    variant, lr and batch size that vary."""

    study: StudyResults
    summary: pd.DataFrame
    cells: pd.DataFrame
    epochs: pd.DataFrame
    claims: pd.DataFrame
    statistics: pd.DataFrame
    times: pd.DataFrame
    notebook: NotebookSection
    missing: pd.DataFrame
    extra: list[str]

    @property
    def comparisons(self) -> pd.DataFrame:
        """comparisons.csv."""
        return comparison_table(self.claims)

    @property
    def cells_per_variant(self) -> int:
        return int(self.cells.groupby("variant", observed=True).size().max()) if len(self.cells) else 0

    @property
    def n_cells(self) -> int:
        return self.study.expected.groupby(CELL_KEYS, dropna=False, observed=True).ngroups


def analyze(study: StudyResults) -> Analysis:
    """Every number of the report for `study`, each computed once."""
    summary = summarize_runs(study)
    cells = aggregate_cells(summary, study.expected)
    claims = decide([*comparison_claims(summary), *axis_claims(summary), *precise_bn_claims(summary),
                     *remedy_claims(summary), *pooling_claims(summary)])
    epochs = study.epochs[counts(study.epochs)]
    return Analysis(study, summary, cells, epochs, claims, statistics_table(summary), time_table(summary),
                    notebook_section(epochs, study.points), missing_runs(study), extra_axes(cells))  # fmt: skip
