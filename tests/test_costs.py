"""The cost model: estimates grow with the work; the ETA follows the finished runs; a
fused group's time counts once."""

import dataclasses

import pytest

from bnstudy.costs import Eta, estimate_seconds, own_seconds
from bnstudy.spec import RunConfig
from bnstudy.variants import variant


def test_estimates_grow_with_the_work_and_the_eta_follows_the_finished_runs():
    small = RunConfig(variant="bn_before", lr=1e-3, batch_size=256, epochs=2, limit_train=10_000)
    large = RunConfig(variant="bn_before", lr=1e-3, batch_size=256, epochs=4, limit_train=20_000)
    assert 0 < estimate_seconds(small) < estimate_seconds(large)
    assert estimate_seconds(dataclasses.replace(small, batch_size=32)) > estimate_seconds(small)
    predicted = estimate_seconds(small)
    eta = Eta([small, small, small], workers=2)
    assert eta.seconds() == pytest.approx(3 * predicted / 2)
    eta.finished(small, [{"train_seconds": predicted, "eval_seconds": 0.0}] * 2)  # took twice the prediction
    assert eta.seconds() == pytest.approx(2 * (2 * predicted) / 2)


def test_fused_rows_count_their_group_time_once():
    rows = [{"train_seconds": 3.0, "eval_seconds": 1.0}] * 2
    assert own_seconds(rows) == 8.0 and own_seconds(rows, group_size=4) == 2.0


@pytest.mark.parametrize("name, point_forwards", [
    ("none", 10_000),  # a test pass
    ("bn_before", 10_000 + 8_192 + 10_000),  # a test pass, then PreciseBN: its sample and a test pass
])  # fmt: skip
def test_each_point_beyond_the_epochs_end_costs_its_forward_passes(name, point_forwards):
    base = RunConfig(variant=name, lr=1e-3, batch_size=256, epochs=2)
    extra = estimate_seconds(dataclasses.replace(base, evals_per_epoch=5)) - estimate_seconds(base)
    assert extra == pytest.approx(2 * 4 * point_forwards * variant(name).forward_us * 1e-6)  # 2 epochs, 4 more points


def test_the_largest_study_allowed_has_an_estimate_in_days_not_thousands_of_hours():
    from bnstudy.costs import format_duration
    from bnstudy.settings import MAX_EPOCHS

    longest = RunConfig(variant="bn_before", lr=1e-3, batch_size=32, epochs=MAX_EPOCHS, evals_per_epoch=100)
    assert [format_duration(s) for s in (7, 760, 11_100, 172_799, 172_800, 3_600 * 24 * 400 + 5_400)] == [
        "7s", "12m40s", "3h05m", "47h59m", "2d00h", "400d01h"]
    assert format_duration(estimate_seconds(longest) * 3240).endswith("h") and "d" in format_duration(1e9)
