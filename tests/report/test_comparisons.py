"""bnstudy.report.comparisons: paired differences between variants against a direct computation,
stuck runs left out, the verdicts, comparisons.csv and its forest plot in the report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from studies import cfg, hand_rows, write_hand_run  # noqa: E402

from bnstudy import cli
from bnstudy.report import comparisons  # noqa: E402
from bnstudy.stats.claims import Verdict, decide  # noqa: E402
from bnstudy.results.aggregate import load_results, typed  # noqa: E402
from bnstudy.report.figures import plot_comparisons  # noqa: E402
from bnstudy.results.metrics import label  # noqa: E402

METRICS = comparisons.COMPARED


def table_of(summary: pd.DataFrame) -> pd.DataFrame:
    """comparisons.csv of a summary whose only claims are its comparisons."""
    return comparisons.comparison_table(decide(comparisons.comparison_claims(summary)))


def summary_of(rows: list[tuple[dict, dict]], stuck=()) -> pd.DataFrame:
    """summary.csv-like rows, typed as the report types them: (settings for studies.cfg,
    metrics), epochs_used 4; the runs at the indices in `stuck` are stuck."""
    frame = [{**cfg(**settings).identity(), "epochs_used": 4, "stuck": i in stuck, **dict.fromkeys(METRICS, np.nan),
              **metrics} for i, (settings, metrics) in enumerate(rows)]  # fmt: skip
    return typed(pd.DataFrame(frame))


def drops_study(before: list[float], after: list[float], none: list[float] | None = None, stuck=()) -> pd.DataFrame:
    """Worst drops per seed of bn_before, bn_after (and none), one cell."""
    per_variant = {"bn_before": before, "bn_after": after} | ({"none": none} if none else {})
    return summary_of([(dict(variant=v, seed=s), dict(worst_drop=d)) for v, values in per_variant.items()
                       for s, d in enumerate(values)], stuck)  # fmt: skip


def test_the_table_matches_a_direct_paired_computation():
    rng = np.random.default_rng(3)
    rows = [(dict(variant=v, lr=lr, seed=s), {m: rng.uniform(0, 0.2) for m in METRICS})
            for lr in (1e-3, 1e-2) for s in range(3) for v in ("none", "bn_before", "bn_after")]  # fmt: skip
    for settings, metrics in rows:
        if settings["variant"] == "none":
            metrics["worst_drop_precise_bn"] = np.nan  # none has no BN statistics
    summary = summary_of(rows, stuck=(4,))  # bn_before at lr 1e-3, seed 1: its pairs go
    table = table_of(summary).set_index(["a", "b", "metric"])
    learning = summary[~summary["stuck"]].astype({"variant": str})
    wide = learning.pivot(index=["lr", "seed"], columns="variant", values=METRICS)
    for a, b in comparisons.VARIANT_PAIRS:
        for metric in METRICS:
            direct = (wide[(metric, a)] - wide[(metric, b)]).dropna()  # pairs in (lr, seed) order, as a's rows
            if direct.empty:
                assert (a, b, metric) not in table.index  # PreciseBN with none
                continue
            row = table.loc[(a, b, metric)]
            assert row["n_pairs"] == len(direct) == (5 if "bn_before" in (a, b) else 6)
            assert row["mean"] == pytest.approx(direct.mean())
            half = stats.t.ppf(0.975, len(direct) - 1) * direct.std(ddof=1) / np.sqrt(len(direct))
            assert (row["low"], row["high"]) == pytest.approx((direct.mean() - half, direct.mean() + half))
            assert (row["above"], row["below"]) == ((direct > 0).sum(), (direct < 0).sum())
            assert row["method"] == "sign-flip, exact" and 0 < row["p"] <= row["p_adjusted"] <= 1
    assert list(table.reset_index().columns) == comparisons.COLUMNS


def test_a_clear_difference_is_claimed_and_an_unclear_one_is_not():
    before, after = [0.10, 0.12, 0.11, 0.09, 0.10, 0.13], [0.02, 0.03, 0.02, 0.01, 0.03, 0.02]
    (row,) = table_of(drops_study(before, after)).to_dict("records")
    assert (row["a"], row["b"], row["verdict"]) == ("bn_before", "bn_after", Verdict.HIGHER.value)
    assert row["p"] == pytest.approx(2 / 64)  # 6 pairs of one sign
    assert table_of(drops_study(after, before))["verdict"].tolist() == [Verdict.LOWER.value]
    # differences +5, -4, +3, -5, +4, -2 pp
    unclear = table_of(drops_study([0.07, 0.02, 0.05, 0.00, 0.06, 0.01], [0.02, 0.06, 0.02, 0.05, 0.02, 0.03]))
    (row,) = unclear.to_dict("records")
    assert row["low"] < 0 < row["high"] and row["verdict"] == Verdict.UNCLEAR.value


@pytest.mark.parametrize("seeds, verdict", [(5, Verdict.TOO_FEW), (6, Verdict.HIGHER)])
def test_six_pairs_are_the_fewest_that_can_make_a_claim(seeds, verdict):
    before = [0.10 + 0.01 * s for s in range(seeds)]
    table = table_of(drops_study(before, [0.02] * seeds))
    assert table["verdict"].tolist() == [verdict.value]


def test_stuck_runs_leave_the_pairs():
    # bn_after's seed 2 is stuck: its 0.0 worst drop would otherwise pair with bn_before's
    summary = drops_study(before=[0.10, 0.12, 0.11, 0.09], after=[0.02, 0.03, 0.0, 0.01], stuck=(6,))
    (row,) = table_of(summary).to_dict("records")
    assert row["n_pairs"] == 3 and row["mean"] == pytest.approx((0.08 + 0.09 + 0.08) / 3)


def test_report_writes_comparisons_csv_and_its_forest_plot(tmp_path):
    curves = {"none": [0.5, 0.6, 0.7, 0.8], "bn_before": [0.6, 0.8, 0.6, 0.85], "bn_after": [0.6, 0.7, 0.72, 0.8]}
    for seed in range(4):
        for variant, acc in curves.items():
            config = cfg(variant, seed=seed)
            # bn_before's last rise grows by 0.4 pp a seed: differences that vary, intervals with a width
            last = 0.004 * seed if variant == "bn_before" else 0.0
            acc_of_seed = [a + 0.01 * seed for a in acc[:-1]] + [acc[-1] + 0.01 * seed + last]
            write_hand_run(tmp_path, config, hand_rows(config, acc_of_seed))
    assert cli.main(["report", str(tmp_path)]) == 0
    written = pd.read_csv(tmp_path / "comparisons.csv")
    claims = pd.read_csv(tmp_path / "claims.csv")
    pd.testing.assert_frame_equal(written, comparisons.comparison_table(claims), check_dtype=False)
    summary = typed(pd.read_csv(tmp_path / "summary.csv"))
    # mean |change| per seed: bn_before (20 + 20 + 25 + 0.4 s) / 3, bn_after (10 + 2 + 8) / 3 pp: 15 + 0.4 * 1.5 / 3
    row = written[(written["a"] == "bn_before") & (written["b"] == "bn_after")
                  & (written["metric"] == "mean_abs_change")]  # fmt: skip
    assert row["mean"].item() == pytest.approx(0.152)
    text = (tmp_path / "report.md").read_text()
    assert "## Paired comparisons between variants" in text and "(figures/comparisons.png)" in text
    assert (written["high"] > written["low"]).any()
    fig = plot_comparisons(load_results(tmp_path), written)
    dots = [(ax, line) for ax in fig.axes for line in ax.get_lines()
            if len(line.get_xdata()) == 1 and line.get_marker() == "o"]  # fmt: skip
    by_metric = {ax.get_title(): [] for ax, _ in dots}
    for ax, line in dots:
        by_metric[ax.get_title()].append(line.get_xdata()[0])
    for metric, rows in written.groupby("metric", sort=False):
        np.testing.assert_allclose(by_metric[label(metric)], 100 * rows["mean"])
    colours = {"higher": "#d62728", "lower": "#1f77b4"}
    expected = [colours.get(v, "#999999") for _, rows in written.groupby("metric", sort=False) for v in rows["verdict"]]
    assert [to_hex(line.get_color()) for _, line in dots] == expected
    plt.close(fig)
