"""Time the reference notebook loop, one solo bnstudy run and one fused group, same config.

    python bench/bench_fused.py [--device auto|cpu|cuda] [--group-size G [G ...]] [--epochs E]
        [--data DIR] [--limit-train N] [--limit-test M] [--solo-runs K]
        [--reference-epochs R] [--threads T]

Config: bn_before, Adam lr 1e-3, batch 256 (the notebook's). The reference is
bench/reference.py in a subprocess (its DataLoader, its per-batch host reads) on the full
data; solo is train.fit of seed 0 (K runs: seeds 0..K-1); fused is fused.fit_group of G
runs, seeds 0..G-1, for each G given (0: fused.max_group_size), all in this process on
the same device.

"Seconds per epoch-run" is what one run's epoch costs: train + evaluation seconds (the
reference: its training pass and test pass; bnstudy's evaluation also computes the two BN
diagnostics, which the reference does not), divided by G for a fused group, whose rows
carry the whole group's time. Each figure is the median over the steady epochs (all but
the first, which pays for CUDA/cuDNN warm-up and DataLoader start; with one epoch, that
one). Speed-ups against the reference are given only when bnstudy ran on the full data.
Prints one JSON object (indent 1) on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bnstudy.engine.data import load_fashion_mnist  # noqa: E402
from bnstudy.engine.fused import fit_group, max_group_size, member_memory_bytes  # noqa: E402
from bnstudy.config.spec import RunConfig  # noqa: E402
from bnstudy.engine.runner import device_name  # noqa: E402
from bnstudy.engine.train import fit  # noqa: E402

CONFIG = dict(variant="bn_before", optimizer="adam", lr=1e-3, batch_size=256)


def steady(values: list[float]) -> float:
    """Median over all epochs but the first (warm-up); the only one if there is one."""
    return statistics.median(values[1:] or values)


def summary(epochs: list[dict], runs_per_row: int) -> dict:
    """Per-epoch train/eval seconds of one engine -> its steady seconds per epoch-run."""
    return {
        "epochs": epochs,
        "seconds_per_epoch_run": steady([(e["train"] + e["eval"]) / runs_per_row for e in epochs]),
        "train_seconds_per_epoch_run": steady([e["train"] / runs_per_row for e in epochs]),
    }


def time_reference(epochs: int, device: str, data_dir: str | None) -> dict:
    """bench/reference.py's per-epoch train/eval seconds (a subprocess: its own DataLoader)."""
    command = [sys.executable, str(ROOT / "bench" / "reference.py"), "--epochs", str(epochs), "--device", device]
    out = subprocess.run(command + (["--data", data_dir] if data_dir else []), cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return summary([{"train": r["train_seconds"], "eval": r["eval_seconds"]} for r in rows], 1)


def epoch_times(rows: list[dict]) -> list[dict]:
    return [{"train": r["train_seconds"], "eval": r["eval_seconds"]} for r in rows]


def time_solo(configs: list[RunConfig], data) -> dict:
    """train.fit of each config in turn; the median epoch-run over all of them."""
    per_run = [epoch_times(fit(c, data).rows) for c in configs]
    epochs = [{k: statistics.median(run[i][k] for run in per_run) for k in ("train", "eval")}
              for i in range(len(per_run[0]))]  # fmt: skip
    return {**summary(epochs, 1), "runs": len(configs)}


def time_fused(configs: list[RunConfig], data) -> dict:
    """fused.fit_group of all configs as one group (every member's row has the group's
    time); on CUDA also its peak memory (the dataset on the device included) beside
    fused.member_memory_bytes's estimate for the group."""
    device = data.train_x.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    results = fit_group(configs, data)
    report = {**summary(epoch_times(results[0].rows), len(configs)), "group_size": len(configs),
              "wall_seconds_incl_setup": time.perf_counter() - start,
              "statuses": sorted({r.status for r in results})}  # fmt: skip
    if device.type == "cuda":
        report["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        report["estimated_memory_mib"] = len(configs) * member_memory_bytes(configs[0].batch_size) / 2**20
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--group-size", type=int, nargs="+", default=[0],
                        help="fused members, one group per value (0, the default: fused.max_group_size)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data", default=None, metavar="DIR")
    parser.add_argument("--limit-train", type=int, default=None, metavar="N")
    parser.add_argument("--limit-test", type=int, default=None, metavar="M")
    parser.add_argument("--solo-runs", type=int, default=1, metavar="K")
    parser.add_argument("--reference-epochs", type=int, default=None, metavar="R", help="default: --epochs; 0 skips")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)  # fmt: skip
    group_sizes = [g or max_group_size(device, CONFIG["batch_size"]) for g in args.group_size]
    reference_epochs = args.epochs if args.reference_epochs is None else args.reference_epochs
    limits = dict(limit_train=args.limit_train, limit_test=args.limit_test)
    seeds = range(max(*group_sizes, args.solo_runs))
    configs = [RunConfig(**CONFIG, **limits, epochs=args.epochs, seed=seed) for seed in seeds]
    report = {
        "date": datetime.date.today().isoformat(), "device": device_name(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "config": {**CONFIG, **limits, "epochs": args.epochs},
    }  # fmt: skip
    if reference_epochs:
        print(f"reference loop, {reference_epochs} epochs on {device} ...", file=sys.stderr, flush=True)
        report["reference"] = time_reference(reference_epochs, device.type, args.data)
    data = load_fashion_mnist(args.data, device, args.limit_train, args.limit_test)
    print(f"solo: {args.solo_runs} run(s) x {args.epochs} epochs ...", file=sys.stderr, flush=True)
    report["solo"] = time_solo(configs[: args.solo_runs], data)
    report["fused"] = []
    for group_size in group_sizes:
        print(f"fused: a group of {group_size} x {args.epochs} epochs ...", file=sys.stderr, flush=True)
        report["fused"].append(time_fused(configs[:group_size], data))
    report["speedup"] = speedups(report, full_data=args.limit_train is None and args.limit_test is None)
    print(json.dumps(report, indent=1))


def speedups(report: dict, full_data: bool) -> dict:
    """Ratios of seconds per epoch-run: solo and each fused group against the reference
    (only on the same, full, data; else None), each fused group against solo."""
    solo = report["solo"]["seconds_per_epoch_run"]
    reference = report["reference"]["seconds_per_epoch_run"] if "reference" in report and full_data else None
    ratios = {"solo_vs_reference": reference / solo if reference else None}
    for fused in report["fused"]:
        seconds, g = fused["seconds_per_epoch_run"], fused["group_size"]
        ratios[f"fused{g}_vs_solo"] = solo / seconds
        ratios[f"fused{g}_vs_reference"] = reference / seconds if reference else None
    return ratios


if __name__ == "__main__":
    main()
