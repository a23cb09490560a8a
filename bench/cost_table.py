"""The CPU cost model's tables (bnstudy.runner.TRAIN_US, FORWARD_US), measured from sweeps.

    python bench/cost_table.py results/default results/quick [--quantile 0.25]

Reads the finished runs of the given study folders (CPU sweeps: one torch thread per
worker, as `bnstudy sweep` runs them) and prints, per variant, single-thread microseconds
per training image for each batch size seen, and per image of an evaluation pass. Each
figure is the `--quantile` of the per-epoch costs, over every epoch but the first (which
pays the worker's warm-up): on a shared machine the low quantiles are the runs least
slowed by other work. Paste the printed dicts into runner.py with the date and command.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bnstudy.aggregate import load_results  # noqa: E402
from bnstudy.settings import TEST_SIZE, TRAIN_SIZE  # noqa: E402


def epoch_costs(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per epoch row: µs per training image and µs per evaluated image, where an epoch's
    evaluation forwards the test set once, or for a BN variant three times plus its
    PreciseBN sample (runner.estimate_seconds' count)."""
    n_train = epochs["limit_train"].fillna(TRAIN_SIZE).astype(float)
    n_test = epochs["limit_test"].fillna(TEST_SIZE).astype(float)
    has_bn = epochs["variant"].astype(str) != "none"
    forwards = n_test + has_bn * (2 * n_test + epochs["precise_bn_samples"].clip(upper=n_train))
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
    print("TRAIN_US = {")
    for variant, rows in by_variant:
        costs = rows.groupby("batch_size")["train_us"].quantile(args.quantile)
        print(f'    "{variant}": {{' + ", ".join(f"{b}: {math.ceil(us)}" for b, us in costs.items()) + "},")
    print("}")
    forward = by_variant["forward_us"].quantile(args.quantile)
    print("FORWARD_US = {" + ", ".join(f'"{v}": {math.ceil(us)}' for v, us in forward.items()) + "}")


if __name__ == "__main__":
    main()
