"""The CPU cost model's figures (each bnstudy.config.variants entry's train_us, forward_us), measured from sweeps.

    python bench/cost_table.py results/default results/quick [--quantile 0.25]

Reads the finished runs of the given study folders (CPU sweeps: one torch thread per
worker, as `bnstudy sweep` runs them) and prints, per variant, single-thread microseconds
per training image for each batch size seen, and per image of an evaluation pass. Each
figure is the `--quantile` of the per-epoch costs, over every epoch but the first (which
pays the worker's warm-up): on a shared machine the low quantiles are the runs least
slowed by other work. Paste the printed figures into bnstudy/variants.py's VARIANT_TABLE
with the date and command.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bnstudy.results.aggregate import load_results  # noqa: E402
from bnstudy.config.settings import TEST_SIZE, TRAIN_SIZE  # noqa: E402
from bnstudy.config.variants import BN_VARIANTS  # noqa: E402


def epoch_costs(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per epoch row: µs per training image and µs per evaluated image, where an epoch's
    evaluation forwards the test set once, or for a BN variant three times plus its
    PreciseBN sample, and each of its evals_per_epoch - 1 extra points the test set once
    more, plus PreciseBN for a BN variant (costs.estimate_seconds' count)."""
    n_train = epochs["limit_train"].fillna(TRAIN_SIZE).astype(float)
    n_test = epochs["limit_test"].fillna(TEST_SIZE).astype(float)
    has_bn = epochs["variant"].astype(str).isin(BN_VARIANTS)
    precise = epochs["precise_bn_samples"].clip(upper=n_train)
    extra_points = epochs["evals_per_epoch"] - 1
    forwards = n_test + has_bn * (2 * n_test + precise) + extra_points * (n_test + has_bn * precise)
    return epochs.assign(train_us=1e6 * epochs["train_seconds"] / n_train,
                         forward_us=1e6 * epochs["eval_seconds"] / forwards)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+")
    parser.add_argument("--quantile", type=float, default=0.25)
    args = parser.parse_args()
    epochs = pd.concat([load_results(root).epochs for root in args.studies], ignore_index=True)
    steady = epoch_costs(epochs[(epochs["epoch"] > 1) & (epochs["device"] == "cpu")])
    by_variant = steady.groupby("variant", observed=True)  # in VARIANTS order
    print(f"# from {', '.join(args.studies)}: the {args.quantile:g} quantile of {len(steady)} steady CPU epochs")
    forward = by_variant["forward_us"].quantile(args.quantile)
    for variant, rows in by_variant:
        costs = rows.groupby("batch_size")["train_us"].quantile(args.quantile)
        train_us = "{" + ", ".join(f"{b}: {math.ceil(us)}" for b, us in costs.items()) + "}"
        print(f"{variant}: train_us {train_us}, forward_us {math.ceil(forward[variant])}")


if __name__ == "__main__":
    main()
