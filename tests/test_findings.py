"""bnstudy.findings: sentences of a one-epoch study."""

from __future__ import annotations

from studies import cfg, hand_rows, write_hand_run

from bnstudy import aggregate, findings, notebook


def test_single_epoch_study_findings(tmp_path):
    for variant, acc in (("none", 0.4), ("bn_before", 0.7)):
        config = cfg(variant, epochs=1)
        write_hand_run(tmp_path, config, hand_rows(config, [acc]))
    study = aggregate.load_results(tmp_path)
    summary = aggregate.summarize_runs(study)
    cells = aggregate.aggregate_cells(summary, study.expected)
    epochs = study.epochs[aggregate.counts(study.epochs)]
    sentences = findings.findings(summary, cells, epochs)
    assert "No run's test accuracy ever fell below an earlier best." in sentences
    assert "The best final test accuracy is 70.0% (bn_before at learning rate 0.001, batch size 256), the worst 40.0% " \
           "(none at learning rate 0.001, batch size 256)." in sentences  # fmt: skip
    assert not any("mean |change| of" in s for s in sentences)  # undefined for one epoch
    notes, _ = notebook.notebook_comparison(epochs, study.points)  # one epoch has no window
    assert "this study is too short to reach log A's window: no comparison." in " ".join(notes)
