"""The price of each remedy of experiments/remedies.toml: its training time per image as a
ratio to the notebook's bn_before (BatchNorm, momentum 0.1, max pooling), same machine,
same process, arms interleaved.

    python bench/bench_remedies.py [--repeats 5]

Each repeat times every arm once, in turn (runner.time_model: about a second of training
steps at batch 256 on the real images, one torch thread, as a CPU worker trains), so a
change in the machine's load reaches every arm alike. Prints the median microseconds per
image of each arm and its ratio to bn_before's, then one JSON line. (The time columns of a
study's own report come from its runs, which may have shared the machine with other work.)
A BN momentum leaves the training step's work as it is: it is timed as a control, whose
ratio shows the measurement's noise. (Frozen statistics change only the last epochs' steps.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bnstudy.config.settings import RunConfig  # noqa: E402
from bnstudy.engine.runner import time_model  # noqa: E402

BASE = RunConfig(variant="bn_before", optimizer="adam", lr=1e-3, batch_size=256, epochs=8, limit_train=25_000)
ARMS = {
    "bn_before (BatchNorm)": {},
    "normalization batchrenorm": {"norm": "batchrenorm"},
    "normalization group": {"norm": "group"},
    "normalization layer": {"norm": "layer"},
    "BN momentum 0.3": {"bn_momentum": 0.3},
    "ghost batch size 32": {"ghost_batch_size": 32},
    "none": {"variant": "none"},
    "bn_before, pooling avg": {"pool": "avg"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times = {arm: [] for arm in ARMS}
    for _ in range(args.repeats):
        for arm, change in ARMS.items():
            train_us, _ = time_model(dataclasses.replace(BASE, **change))
            times[arm].append(train_us[BASE.batch_size])
    base = statistics.median(times["bn_before (BatchNorm)"])
    print(f"training us per image, median of {args.repeats} (batch 256, one torch thread); ratio to bn_before")
    result = {}
    for arm, values in times.items():
        median = statistics.median(values)
        result[arm] = {"us_per_image": round(median, 2), "ratio": round(median / base, 2)}
        print(f"  {arm:28} {median:7.2f} us  x{median / base:.2f}")
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "repeats": args.repeats,
                      "arms": result}))  # fmt: skip


if __name__ == "__main__":
    main()
