"""Hand-made run files for the report's tests: rows with chosen accuracies, written
through bnstudy.results.store as a sweep writes them, so the expected metrics can be computed by
hand. (The real runs live in conftest.py's real_study.)"""

from __future__ import annotations

import math

import pandas as pd

from bnstudy.config.spec import RunConfig
from bnstudy.report.figures import FIGURES, draw_figure
from bnstudy.results.runfiles import RunOutcome
from bnstudy.engine.runner import now, run_metadata
from bnstudy.results.store import RunStore
from bnstudy.config.settings import CSV_COLUMNS
from bnstudy.engine.train import identity_fields

VARIANTS = ["none", "bn_before", "bn_after"]


def hand_rows(config: RunConfig, test_acc, train_acc=None, precise=None, batch_stats=None, nan_from=None):
    """CSV rows for `config` with the given per-epoch accuracies; from epoch `nan_from` on
    (1-based) the losses are NaN, as in a diverged run."""
    n = len(test_acc)
    train_acc = train_acc if train_acc is not None else [a + 0.05 for a in test_acc]
    has_bn = config.variant != "none"
    precise = precise if precise is not None else ([a + 0.01 for a in test_acc] if has_bn else [None] * n)
    batch_stats = batch_stats if batch_stats is not None else ([a - 0.01 for a in test_acc] if has_bn else [None] * n)
    rows = []
    for e in range(n):
        broken = nan_from is not None and e + 1 >= nan_from
        rows.append({**identity_fields(config), "epoch": e + 1, "train_loss": math.nan if broken else 0.5,
                     "train_acc": train_acc[e], "test_loss": math.nan if broken else 0.6, "test_acc": test_acc[e],
                     "test_acc_batch_stats": batch_stats[e], "test_acc_precise_bn": precise[e],
                     "train_seconds": 2.0, "eval_seconds": 1.0, "samples_per_second": 100.0})  # fmt: skip
    return rows


def hand_points(config: RunConfig, test_acc, precise=None) -> list[dict]:
    """Points rows (settings.EVALS_COLUMNS) for a run with k = config.evals_per_epoch points
    an epoch: `test_acc` (and `precise`, default test_acc + 0.01 for a BN variant) holds k
    values per epoch in order, the k-th of each epoch being its CSV row's."""
    k, steps = config.evals_per_epoch, config.limit_train // config.batch_size
    has_bn = config.variant != "none"
    precise = precise if precise is not None else [a + 0.01 if has_bn else None for a in test_acc]
    rows = []
    for i, (acc, pbn) in enumerate(zip(test_acc, precise)):
        epoch, point = i // k + 1, i % k + 1
        step = round(point * steps / k)
        rows.append({"run_id": config.run_id, "epoch": epoch, "point": point, "step": (epoch - 1) * steps + step,
                     "epoch_fraction": epoch - 1 + step / steps, "test_acc": acc,
                     "test_acc_precise_bn": pbn})  # fmt: skip
    return rows


def write_hand_run(root, config: RunConfig, rows, status="complete", points=()) -> None:
    """Write a run's files as a sweep does; `points` (hand_points) for a run with evals_per_epoch > 1."""
    metadata = run_metadata(config, status, "cpu", now(), now(), epochs_done=len(rows))
    RunStore(root).write_run(RunOutcome(rows, metadata, list(points)))


def cfg(variant="bn_before", lr=1e-3, batch_size=256, seed=0, epochs=4, **kw) -> RunConfig:
    return RunConfig(variant=variant, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed, limit_train=1024,
                     limit_test=512, study="hand", **kw)  # fmt: skip


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


# The fixed settings of a study of tiny real runs (256 training / 200 test images): seconds each.
TINY_SETTINGS = dict(epochs=2, limit_train=256, limit_test=200, precise_bn_samples=64, batch_size=64, lr=1e-3)


def tiny_spec(name: str, grid: str, **settings) -> str:
    """The text of a study spec named `name`: TINY_SETTINGS with `settings` in their place,
    then the [grid] lines `grid`."""
    fixed = "".join(f"{key} = {value!r}\n" for key, value in {**TINY_SETTINGS, **settings}.items())
    return f'name = "{name}"\n{fixed}[grid]\n{grid}'


def draw_figures(a) -> dict:
    """Every figure of the Analysis `a` that has something to show, by name, in FIGURES
    order, open: the test closes them."""
    return {name: fig for name in FIGURES if (fig := draw_figure(a, name)) is not None}
