"""Shared fixtures: small slices of the real Fashion-MNIST (never synthetic data), and the
studies the report's tests read: a hand-made partial one and a small real one."""

from __future__ import annotations

import itertools

import pytest
import torch
from studies import VARIANTS, cfg, hand_rows, write_hand_run

from bnstudy.results import aggregate
from bnstudy.engine.data import load_fashion_mnist
from bnstudy.engine.runner import execute
from bnstudy.config.spec import RunConfig
from bnstudy.results.store import RunStore

SMALL_TRAIN, SMALL_TEST = 1024, 512


@pytest.fixture(scope="session")
def small_data():
    """The first 1,024 training and 512 test images, on the CPU, float32."""
    return load_fashion_mnist(None, "cpu", SMALL_TRAIN, SMALL_TEST)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """One torch thread: on tiny slices, threading costs more than it gains (about 10x
    slower with 2 threads on the 2-core CI box when other processes compete)."""
    torch.set_num_threads(1)
    yield


@pytest.fixture

def partial_study(tmp_path):
    """3 variants x 2 seeds, lr 1e-3, batch 256: none s0 complete, none s1 failed,
    bn_before s0 diverged, bn_before s1 never run, bn_after s0 a CSV without its JSON,
    bn_after s1 a JSON saying complete without its CSV; and the spec.toml of that grid, as
    the sweep leaves it (without one, the grid is the runs there: bn_before s1 is not missed)."""
    root = tmp_path / "partial"
    RunStore(root).write_spec('name = "hand"\nepochs = 4\nlr = 1e-3\nbatch_size = 256\nlimit_train = 1024\n'
                              'limit_test = 512\n[grid]\nvariant = ["none", "bn_before", "bn_after"]\nseed = [0, 1]\n')
    write_hand_run(root, cfg("none", seed=0), hand_rows(cfg("none", seed=0), [0.3, 0.5, 0.4, 0.6]))
    write_hand_run(root, cfg("none", seed=1), hand_rows(cfg("none", seed=1), [0.3]), status="failed")
    write_hand_run(root, cfg("bn_before", seed=0), hand_rows(cfg("bn_before", seed=0), [0.7, 0.8, 0.1], nan_from=3),
                   status="diverged")  # fmt: skip
    RunStore(root).csv_path(cfg("bn_after", seed=0).run_id).write_text("run_id\n")
    write_hand_run(root, cfg("bn_after", seed=1), hand_rows(cfg("bn_after", seed=1), [0.3]))
    RunStore(root).csv_path(cfg("bn_after", seed=1).run_id).unlink()
    return root


@pytest.fixture(scope="session")

def real_study(tmp_path_factory, small_data):
    """12 tiny real runs: 3 variants x lr {1e-3, 1e-2} x batch 256 x seeds {0, 1}, 3 epochs
    on the first 1,024 / 512 images; includes the notebook's cell (bn_before, adam, 1e-3, 256)."""
    root = tmp_path_factory.mktemp("real") / "study"
    store = RunStore(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # runs this small gain nothing from a second thread, and lose much on a busy box
    try:
        for variant, lr, seed in itertools.product(VARIANTS, (1e-3, 1e-2), (0, 1)):
            config = RunConfig(variant=variant, lr=lr, batch_size=256, epochs=3, seed=seed,
                               limit_train=len(small_data.train_x), limit_test=len(small_data.test_x),
                               precise_bn_samples=256, study="real")  # fmt: skip
            store.write_run(execute(config, small_data))
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="session")

def real_tables(real_study):
    study = aggregate.load_results(real_study)
    summary = aggregate.summarize_runs(study)
    return study, summary, aggregate.aggregate_cells(summary, study.expected)


@pytest.fixture(scope="session")
def real_analysis(real_study):
    """The report's Analysis of real_study."""
    from bnstudy.report.analysis import analyze

    return analyze(aggregate.load_results(real_study))
