"""bnstudy.findings: the notebook log's metrics by hand, sentences of a one-epoch study."""

from __future__ import annotations

import numpy as np
import pytest
from studies import cfg, hand_rows, write_hand_run

from bnstudy import aggregate, findings


def test_notebook_log_metrics():
    m = findings.notebook_metrics()  # 0.838, 0.821, 0.704, 0.842, 0.686
    assert m["mean_abs_change"] == pytest.approx((0.017 + 0.117 + 0.138 + 0.156) / 4)
    assert m["worst_drop"] == pytest.approx(0.842 - 0.686)
    assert m["late_std"] == pytest.approx(np.std([0.704, 0.842, 0.686]))
    assert m["gen_gap"] == pytest.approx(0.919 - 0.686)


def test_single_epoch_study_findings(tmp_path):
    for variant, acc in (("none", 0.4), ("bn_before", 0.7)):
        config = cfg(variant, epochs=1)
        write_hand_run(tmp_path, config, hand_rows(config, [acc]))
    study = aggregate.load_results(tmp_path)
    summary = aggregate.summarize_runs(study)
    cells = aggregate.aggregate_cells(summary, study.expected)
    sentences = findings.findings(summary, cells, study.epochs[aggregate.counts(study.epochs)])
    assert "No run's test accuracy ever fell below an earlier best." in sentences
    assert "The best final test accuracy is 70.0% (bn_before at learning rate 0.001, batch size 256), the worst 40.0% " \
           "(none at learning rate 0.001, batch size 256)." in sentences  # fmt: skip
    assert not any("mean |change| of" in s for s in sentences)  # undefined for one epoch
    assert findings.notebook_comparison(summary) is None  # one epoch shows no swing to compare
