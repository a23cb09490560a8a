"""bnstudy.report.plan and `bnstudy plan`: seeds per claim against contrasts.pairs_needed, and
bad input as one line."""

from __future__ import annotations

import math

import pytest
from studies import cfg, hand_rows, write_hand_run

from bnstudy import cli
from bnstudy.stats import contrasts
from bnstudy.report import plan
from bnstudy.results.aggregate import load_results
from bnstudy.report.analysis import analyze
from bnstudy.stats.claims import ALPHA
from bnstudy.errors import UserError


@pytest.mark.parametrize("text, value", [("1pp", 0.01), ("0.5 pp", 0.005), ("0.02", 0.02), (".5pp", 0.005)])
def test_a_difference_reads_in_pp_or_as_a_fraction(text, value):
    assert plan.parse_difference(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["1p", "-1pp", "0", "200pp", "one"])
def test_a_bad_difference_is_refused(text):
    with pytest.raises(UserError):
        plan.parse_difference(text)


@pytest.fixture
def study(tmp_path):
    """bn_before and none, 4 seeds: bn_before falls 10 + 2s pp, none rises."""
    for seed in range(4):
        for variant, acc in (("bn_before", [0.7, 0.8, 0.7 - 0.02 * seed, 0.85]), ("none", [0.5, 0.6, 0.7, 0.8])):
            config = cfg(variant, seed=seed)
            write_hand_run(tmp_path, config, hand_rows(config, acc))
    return tmp_path


def test_seeds_per_claim_follow_the_observed_spread(study):
    a = analyze(load_results(study))
    table = plan.plan_table(a, 0.01)
    m = int(a.claims["p"].notna().sum())
    for row, (_, claim) in zip(table.itertuples(), a.claims[a.claims["n_pairs"] > 1].iterrows()):
        needed = contrasts.pairs_needed(0.01, claim["sd"], ALPHA / m)
        assert (math.isnan(row.seeds) and needed is None) or row.seeds == needed  # one pair per seed here


def test_plan_prints_a_line_per_claim_and_refuses_a_bad_difference(study, capsys):
    assert cli.main(["plan", str(study), "--detect", "2pp"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study hand: ") and "bn_before − none" in out
    assert cli.main(["plan", str(study), "--detect", "2 percent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnstudy: error: --detect") and err.count("\n") == 1
