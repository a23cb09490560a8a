"""What one point of the finer curve (evals_per_epoch) costs, against an epoch-end evaluation.

    python bench/bench_points.py [--repeats 5] [--threads 1]

Per variant (bn_before, none; batch 256, all 60,000 / 10,000 images, the notebook's setting):
times train.point_counts (eval-mode test pass, plus PreciseBN for BN variants) and the
epoch-end evaluation train.train_and_evaluate does (eval-mode test pass, plus the
batch-statistics pass and PreciseBN), alternating in one process so both see the same
machine state, with one host read each as in training. Prints the medians and their
ratio, then one JSON line. A run with evals_per_epoch = k pays k - 1 points per epoch
(the k-th is the epoch-end evaluation itself).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bnstudy.engine.data import load_fashion_mnist  # noqa: E402
from bnstudy.config.settings import RunConfig  # noqa: E402
from bnstudy.engine.train import (  # noqa: E402
    EVAL_BATCH_SIZE,
    accuracy_with_batch_stats,
    accuracy_with_precise_bn,
    build_model,
    evaluate,
    point_counts,
    precise_bn_subset,
)


def read(counts: list[torch.Tensor]) -> None:
    """The one host read a point or an evaluation ends with in training."""
    torch.stack([c.double() for c in counts]).tolist()


def time_variant(variant: str, data, repeats: int) -> dict:
    """Median seconds of a point and of an epoch-end evaluation of a fresh `variant` model."""
    config = RunConfig(variant=variant, lr=1e-3, batch_size=256, epochs=1)
    model = build_model(config, torch.device("cpu")).train()
    subset = precise_bn_subset(config, len(data.train_x), "cpu") if variant != "none" else None

    def point() -> None:
        read(point_counts(model, data, subset, config.batch_size))

    def epoch_end() -> None:
        model.eval()
        counts = [*evaluate(model, data.test_x, data.test_y, EVAL_BATCH_SIZE)]
        if subset is not None:
            counts += [accuracy_with_batch_stats(model, data, config.batch_size),
                       accuracy_with_precise_bn(model, data, subset, config.batch_size)]  # fmt: skip
        read(counts)
        model.train()

    times: dict[str, list[float]] = {"point": [], "epoch_end": []}
    for _ in range(repeats):
        for name, measure in (("point", point), ("epoch_end", epoch_end)):
            start = time.perf_counter()
            measure()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"variant": variant, **medians, "ratio": medians["point"] / medians["epoch_end"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a sweep's worker uses 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(None, "cpu")
    results = [time_variant(variant, data, args.repeats) for variant in ("bn_before", "none")]
    for r in results:
        print(f"{r['variant']:10} point {r['point']:.3f} s   epoch-end evaluation {r['epoch_end']:.3f} s   "
              f"ratio {r['ratio']:.2f}")  # fmt: skip
    print(json.dumps({"threads": args.threads, "repeats": args.repeats, "machine": platform.processor() or
                      platform.machine(), "torch": torch.__version__, "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()
