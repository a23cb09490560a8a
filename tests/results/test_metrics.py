"""bnstudy.results.metrics: every metric aggregate computes is declared once, and only those."""

from __future__ import annotations

from bnstudy.results import aggregate
from bnstudy.results import metrics


def test_every_computed_metric_is_declared_and_every_declared_one_computed():
    assert list(metrics.METRICS) == aggregate.ALL_METRICS


def test_a_declaration_names_a_metric_everywhere():
    m = metrics.METRICS["worst_drop_precise_bn"]
    assert (m.label, m.unit, m.header, m.better) == (
        "worst drop, PreciseBN", "pp", "worst drop, PreciseBN (pp)", "lower")  # fmt: skip
    assert metrics.METRICS["fine_worst_drop"].curve == metrics.EVERY_POINT
    assert metrics.METRICS["final_acc"].better == "higher" and metrics.METRICS["final_acc"].unit == "%"
