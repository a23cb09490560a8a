"""bnstudy.comparisons: paired differences between variants against a direct computation,
stuck runs left out, the words (a claim only when the interval excludes 0), comparisons.csv
and its forest plot in the report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from studies import cfg, hand_rows, write_hand_run  # noqa: E402

from bnstudy import cli, comparisons, contrasts  # noqa: E402
from bnstudy.aggregate import load_results, typed  # noqa: E402
from bnstudy.figures import plot_comparisons  # noqa: E402

METRICS = list(comparisons.METRICS)


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
    table = comparisons.comparison_table(summary).set_index(["a", "b", "metric"])
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
            low, high = contrasts.bootstrap_interval(direct.to_numpy())
            assert (row["low"], row["high"]) == pytest.approx((low, high))
            assert (row["above"], row["below"]) == ((direct > 0).sum(), (direct < 0).sum())
    assert list(table.reset_index().columns) == comparisons.COLUMNS


def test_a_clear_difference_is_claimed_and_an_unclear_one_is_not():
    clear = comparisons.comparison_table(drops_study(before=[0.10, 0.12, 0.11, 0.09], after=[0.02, 0.03, 0.02, 0.01]))
    (row,) = clear.to_dict("records")
    assert (row["a"], row["b"], row["verdict"]) == ("bn_before", "bn_after", "bn_before higher than bn_after")
    flipped = comparisons.comparison_table(drops_study(before=[0.02, 0.03, 0.02, 0.01], after=[0.10, 0.12, 0.11, 0.09]))
    assert flipped["verdict"].tolist() == ["bn_before lower than bn_after"]
    # differences +5, -4, +3, -5 pp: the interval includes 0
    before, after = [0.07, 0.02, 0.05, 0.00], [0.02, 0.06, 0.02, 0.05]
    unclear = comparisons.comparison_table(drops_study(before, after))
    (row,) = unclear.to_dict("records")
    assert row["low"] < 0 < row["high"] and row["verdict"] == "no clear difference at this many seeds"
    (sentence, _) = comparisons.comparison_findings(unclear)
    mean = np.mean(np.subtract(before, after))
    assert sentence == (f"bn_before minus bn_after, paired by cell and seed: worst drop {100 * mean:+.1f} pp (95% interval "
                        f"{100 * row['low']:+.1f} to {100 * row['high']:+.1f} pp; bn_before above bn_after in 2, below "
                        "in 2 of 4 pairs): no clear difference at this many seeds.")  # fmt: skip


def test_two_pairs_are_too_few_to_claim_anything():
    table = comparisons.comparison_table(drops_study(before=[0.10, 0.12], after=[0.02, 0.03]))
    assert table["verdict"].tolist() == ["no clear difference at this many seeds"]


def test_stuck_runs_leave_the_pairs():
    # bn_after's seed 2 is stuck: its 0.0 worst drop would otherwise pair with bn_before's
    summary = drops_study(before=[0.10, 0.12, 0.11, 0.09], after=[0.02, 0.03, 0.0, 0.01], stuck=(6,))
    (row,) = comparisons.comparison_table(summary).to_dict("records")
    assert row["n_pairs"] == 3 and row["mean"] == pytest.approx((0.08 + 0.09 + 0.08) / 3)


@pytest.mark.parametrize("none, words", [
    ([0.20, 0.21, 0.22, 0.19], "clearly below none (-18.0 pp, 95% interval"),  # bn_after - none: -18, -15, -20, -19
    ([0.07, 0.02, 0.05, 0.00], "not clearly different from none (-1.0 pp, 95% interval"),  # -5, +4, -3, 0
])  # fmt: skip
def test_the_smallest_variant_is_said_to_be_clearly_below_only_when_it_is(none, words):
    """bn_after (the smallest by mean worst drop: 2.5 pp) against bn_before (10.5 pp: -8,
    -6, -9, -9 pp per pair, clearly below) and none."""
    summary = drops_study(before=[0.10, 0.12, 0.11, 0.09], after=[0.02, 0.06, 0.02, 0.00], none=none)
    text = comparisons.smallest_text(comparisons.comparison_table(summary), "bn_after", ["bn_before", "none"], "worst_drop")
    assert text.startswith("clearly below bn_before (-8.0 pp, 95% interval")
    assert "and " + words in text and "over 4 pairs" in text


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
    summary = typed(pd.read_csv(tmp_path / "summary.csv"))
    pd.testing.assert_frame_equal(written, comparisons.comparison_table(summary), check_dtype=False)
    text = (tmp_path / "report.md").read_text()
    assert "## Paired comparisons between variants" in text and "(figures/comparisons.png)" in text
    # mean |change| per seed: bn_before (20 + 20 + 25 + 0.4 s) / 3, bn_after (10 + 2 + 8) / 3 pp: 15 + 0.4 * 1.5 / 3
    assert "bn_before minus bn_after, paired by cell and seed: mean |change| +15.2 pp" in text
    assert (written["high"] > written["low"]).any()
    fig = plot_comparisons(load_results(tmp_path), summary)
    ax = fig.axes[0]
    dots = [line for line in ax.get_lines() if len(line.get_xdata()) == 1 and line.get_marker() == "o"]
    np.testing.assert_allclose([d.get_xdata()[0] for d in dots], 100 * written["mean"])
    colours = {"higher": "#d62728", "lower": "#1f77b4", "no clear": "#999999"}
    expected = [colours["no clear" if v.startswith("no clear") else v.split()[1]] for v in written["verdict"]]
    assert [to_hex(d.get_color()) for d in dots] == expected
    plt.close(fig)
