"""Time `bnstudy run` against the reference notebook loop, same config, same invocation.

    python bench/bench_cpu.py [--epochs 2] [--repeats 2] [--device cpu]

Config: bn_before, Adam lr 1e-3, batch 256, full data (the notebook's). The two programs
run alternately as subprocesses (reference, bnstudy, reference, ...), so both see the
same machine state. Per epoch, the reference loop's time is its training pass plus its
test evaluation; bnstudy's is train_seconds + eval_seconds, where its evaluation also
computes the two BN diagnostics (batch statistics, PreciseBN) the reference does not.
Prints medians over all epochs of all repeats and their ratios, then one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def reference_epochs(epochs: int, device: str) -> list[dict]:
    """Per-epoch {train, epoch} seconds of bench/reference.py."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "reference.py"), "--epochs", str(epochs),
                          "--device", device], cwd=ROOT, check=True, capture_output=True, text=True).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [{"train": r["train_seconds"], "epoch": r["epoch_seconds"]} for r in rows]


def bnstudy_epochs(epochs: int, device: str) -> list[dict]:
    """Per-epoch {train, epoch} seconds of `bnstudy run` on the same config."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "bnstudy", "run", "--variant", "bn_before", "--optimizer", "adam",
                        "--lr", "1e-3", "--batch-size", "256", "--epochs", str(epochs), "--device", device,
                        "--out", out], cwd=ROOT, check=True, capture_output=True)  # fmt: skip
        (path,) = Path(out, "runs").glob("*.csv")
        with open(path) as f:
            rows = list(csv.DictReader(f))
    return [{"train": float(r["train_seconds"]), "epoch": float(r["train_seconds"]) + float(r["eval_seconds"])}
            for r in rows]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    timings = {"reference": [], "bnstudy": []}
    for repeat in range(args.repeats):
        timings["reference"] += reference_epochs(args.epochs, args.device)
        timings["bnstudy"] += bnstudy_epochs(args.epochs, args.device)
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    median = {name: {k: statistics.median(e[k] for e in epochs) for k in ("train", "epoch")}
              for name, epochs in timings.items()}  # fmt: skip
    ratio = {k: median["reference"][k] / median["bnstudy"][k] for k in ("train", "epoch")}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.device}"
    print(f"machine: {machine}; {args.repeats} repeats x {args.epochs} epochs; medians over epochs")
    print(f"{'':12}{'train s/epoch':>15}{'epoch s (train+eval)':>22}")
    for name in ("reference", "bnstudy"):
        print(f"{name:12}{median[name]['train']:>15.2f}{median[name]['epoch']:>22.2f}")
    print(f"{'speed-up':12}{ratio['train']:>14.2f}x{ratio['epoch']:>21.2f}x")
    print(json.dumps({"machine": machine, "median_seconds": median, "speedup": ratio,
                      "epochs": args.epochs, "repeats": args.repeats}))  # fmt: skip


if __name__ == "__main__":
    main()
