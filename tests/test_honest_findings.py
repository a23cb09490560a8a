"""Every finding sentence that compares or ranks, on hand-made studies whose answers are
known: each test fails if the sentence states the opposite (the comparison inverted)."""

from __future__ import annotations

import pandas as pd
import pytest
from studies import cfg, hand_rows, write_hand_run

from bnstudy import aggregate, findings

SEEDS = range(4)


def study_tables(root, curves: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Write one run per {(variant, lr, seed): test accuracy per epoch [, PreciseBN's]} and
    read it back as the report does: (summary, cells, counted epochs)."""
    for (variant, lr, seed), acc in curves.items():
        acc, precise = acc if isinstance(acc, tuple) else (acc, None)
        config = cfg(variant, lr=lr, seed=seed)
        write_hand_run(root, config, hand_rows(config, acc, precise=precise))
    study = aggregate.load_results(root)
    summary = aggregate.summarize_runs(study)
    return summary, aggregate.aggregate_cells(summary, study.expected), study.epochs[aggregate.counts(study.epochs)]


def known_curves() -> dict:
    """Two cells (lr 1e-3 and 1e-2) x 3 variants x 4 seeds with known answers:
    - none only rises (worst drop 0, upward share 100%): the smallest worst drop, still learning;
    - bn_before at lr 1e-3 falls 15 + s pp from its best: the cell with the largest worst drop;
    - bn_after at lr 1e-2 ends at 80, 83, 86, 89%: the seeds disagree most there (3.9 pp)."""
    curves = {}
    for s in SEEDS:
        curves |= {
            ("none", 1e-3, s): [0.50, 0.60, 0.70, 0.80 + 0.01 * s],
            ("bn_before", 1e-3, s): [0.70, 0.85, 0.70 - 0.01 * s, 0.86],
            ("bn_after", 1e-3, s): [0.70, 0.80, 0.78, 0.84 + 0.005 * s],
            ("none", 1e-2, s): [0.40, 0.50, 0.55, 0.60],
            ("bn_before", 1e-2, s): [0.70, 0.80, 0.75 - 0.01 * s, 0.82],
            ("bn_after", 1e-2, s): [0.70, 0.78, 0.77, 0.80 + 0.03 * s],
        }
    return curves


@pytest.fixture
def known(tmp_path):
    summary, cells, epochs = study_tables(tmp_path, known_curves())
    return summary, cells, epochs, findings.findings(summary, cells, epochs)


def one(sentences: list[str], start: str) -> str:
    (sentence,) = [s for s in sentences if s.startswith(start)]
    return sentence


def test_the_cell_with_the_largest_worst_drop(known):
    *_, sentences = known
    # bn_before at lr 1e-3: mean over seeds of 15, 16, 17 and 18 pp
    assert one(sentences, "By cell").startswith("By cell (mean over seeds), the largest worst drop is 16.5 pp (bn_before "
                                                 "at learning rate 0.001, batch size 256); cells whose accuracy never "
                                                 "drops in any seed: 2 of 6.")  # fmt: skip


def test_smallest_worst_drop_names_the_variant_and_its_paired_contrasts(known):
    *_, sentences = known
    sentence = one(sentences, "Averaged over their grid cells, the worst drop")
    # bn_before: 15 + s pp at lr 1e-3, 5 + s pp at lr 1e-2 (s = 0..3); bn_after: 2 and 1 pp
    assert "0.0 pp for none, 11.5 pp for bn_before and 1.5 pp for bn_after, smallest for none;" in sentence
    # none minus bn_before per pair: -(15 + s) and -(5 + s) pp, every one below 0
    assert "none's is clearly below bn_before (-11.5 pp" in sentence
    assert "clearly below bn_after (-1.5 pp" in sentence and "over 8 pairs" in sentence
    # none only rises: its small worst drop is no sign of stability
    assert "but none's test accuracy mostly rises (upward share 100%): it is still learning" in sentence


def test_seeds_disagree_most_where_the_final_accuracies_spread_most(known):
    summary, *_, sentences = known
    spread = pd.Series([0.80, 0.83, 0.86, 0.89]).std()  # bn_after at lr 1e-2, by hand
    median = summary.groupby(["variant", "lr"], observed=True)["final_acc"].std().median()  # direct
    assert one(sentences, "Seeds disagree most") == (
        f"Seeds disagree most for bn_after at learning rate 0.01, batch size 256: the std of final accuracy over its "
        f"4 seeds is {100 * spread:.1f} pp (median over cells: {100 * median:.1f} pp).")  # fmt: skip


@pytest.mark.parametrize("direction, words", [
    (1, "so here it mostly measures learning progress rather than instability."),
    (-1, "so here it mostly measures falls, that is instability."),
])  # fmt: skip
def test_the_upward_share_says_whether_changes_are_gains_or_falls(tmp_path, direction, words):
    """Every run rises 10 pp, falls 2 pp, rises 10 pp (share 91%), or the mirror image."""
    steps = [0.5, 0.5 + 0.10 * direction, 0.5 + 0.08 * direction, 0.5 + 0.18 * direction]
    summary, cells, epochs = study_tables(tmp_path, {(v, 1e-3, s): steps for v in ("none", "bn_before") for s in SEEDS})
    sentence = one(findings.findings(summary, cells, epochs), "Mean |change| counts gains and falls alike")
    share = 0.20 / 0.22 if direction > 0 else 0.02 / 0.22
    assert f"its upward share is {share:.0%} for none and {share:.0%} for bn_before, {words}" in sentence


def precise_study(tmp_path, precise: list[float]):
    """One bn_before run: test accuracy 70, 80, 60, 85% (mean |change| 18.3 pp, worst drop
    20 pp), PreciseBN's `precise`."""
    return study_tables(tmp_path, {("bn_before", 1e-3, 0): ([0.70, 0.80, 0.60, 0.85], precise)})


@pytest.mark.parametrize("precise, removes, verdict", [
    # mean |change| 3.3 pp, worst drop 0: both more than halved
    ([0.70, 0.75, 0.78, 0.80], "removes 82% of the mean |change| and removes 100% of the worst drop",
     "so most of the instability comes from the running statistics."),
    # mean |change| 11.7 pp (36% less), worst drop 10 pp (50% less): not both halved
    ([0.70, 0.80, 0.70, 0.85], "removes 36% of the mean |change| and removes 50% of the worst drop",
     "so the running statistics cause part of the instability."),
    # the same curve: nothing removed
    ([0.70, 0.80, 0.60, 0.85], "removes 0% of the mean |change| and removes 0% of the worst drop",
     "so the running statistics do not cause the instability."),
])  # fmt: skip
def test_the_precise_bn_verdict(tmp_path, precise, removes, verdict):
    summary, _, _ = precise_study(tmp_path, precise)
    (sentence,) = findings.precise_bn_findings(summary)
    assert f"PreciseBN {removes}, {verdict}" in sentence
