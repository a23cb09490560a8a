"""The activation and bn_momentum axes end to end: from a study spec's [grid] through a real
sweep to the run CSVs, summary.csv and cells.csv, the figures' facets and report.md."""

from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from studies import draw_figures, tiny_spec  # noqa: E402

from bnstudy.results import aggregate
from bnstudy import cli  # noqa: E402
from bnstudy.report.analysis import analyze  # noqa: E402

AXES_SPEC = tiny_spec("axes", 'variant = ["none", "bn_before"]\nactivation = ["sigmoid", "relu"]\n'
                               'bn_momentum = [0.1, 0.03]\nseed = [0]\n')


@pytest.fixture(scope="module")
def axes_study(tmp_path_factory):
    """6 tiny real runs (bn_before x 2 activations x 2 momenta, none x 2 activations: the
    momentum does not apply to none, so its grid points are one run each), swept and reported."""
    root = tmp_path_factory.mktemp("axes")
    spec = root / "axes.toml"
    spec.write_text(AXES_SPEC)
    threads = torch.get_num_threads()
    try:
        assert cli.main(["sweep", str(spec), "--out", str(root / "out"), "--jobs", "1", "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)  # an in-process sweep sets one thread, as a worker does
    assert cli.main(["report", str(root / "out")]) == 0
    return root / "out"


def test_each_run_csv_carries_its_activation_and_momentum(axes_study):
    seen = set()
    for path in (axes_study / "runs").glob("*.csv"):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2 and len({(r["activation"], r["bn_momentum"]) for r in rows}) == 1
        seen.add((rows[0]["variant"], rows[0]["activation"], float(rows[0]["bn_momentum"])))
        # a run at the defaults keeps the 0.1-style name; a run off them says so in its name
        assert ("relu" in path.stem) == (rows[0]["activation"] == "relu")
        assert ("bnm0.03" in path.stem) == (rows[0]["bn_momentum"] == "0.03")
    assert seen == {("bn_before", a, m) for a in ("sigmoid", "relu") for m in (0.1, 0.03)} | {
        ("none", a, 0.1) for a in ("sigmoid", "relu")}  # fmt: skip


def test_summary_and_cells_have_a_row_per_axis_value(axes_study):
    summary, cells = pd.read_csv(axes_study / "summary.csv"), pd.read_csv(axes_study / "cells.csv")
    for table in (summary, cells):
        assert {"activation", "bn_momentum"} <= set(table.columns) and len(table) == 6
        counts = table.groupby(["activation", "bn_momentum"]).size()
        assert counts.to_dict() == {(a, m): 2 if m == 0.1 else 1 for a in ("relu", "sigmoid") for m in (0.03, 0.1)}
    assert (cells["n"] == 1).all()


def test_figures_facet_by_the_axes_and_the_report_names_them(axes_study):
    figures = draw_figures(analyze(aggregate.load_results(axes_study)))
    titles = {ax.get_title() for ax in figures["accuracy_curves"].axes}
    rows = {text.get_text() for ax in figures["accuracy_curves"].axes for text in ax.texts}  # margin titles
    labels = " ".join(titles | rows)
    for words in ("activation relu", "activation sigmoid", "BN momentum 0.03", "BN momentum 0.1"):
        assert words in labels, (words, labels)
    heat_titles = {ax.get_title() for ax in figures["stability_worst_drop"].axes}
    assert "bn_before (activation relu, BN momentum 0.03)" in heat_titles
    text = (axes_study / "report.md").read_text()
    assert "activation (sigmoid, relu)" in text and "BN momentum (0.03, 0.1)" in text
