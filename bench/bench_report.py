"""How long `bnstudy report` takes on a study, against the time to import the libraries it
needs, same machine, same invocation, runs interleaved.

    python bench/bench_report.py [STUDY] [--repeats 5] [--jobs 1 2]

STUDY (default results/default) is copied once (its spec.toml and runs/: what a report
reads) into a temporary folder, and each repeat runs, one after the other, a fresh
`python -m bnstudy report COPY --jobs N` for each N, and the floor: a fresh python that
imports pandas, scipy.stats, matplotlib.pyplot and seaborn and does nothing else. Prints
the median wall seconds of each, the report's ratio to the floor (which moves less between
machines than seconds do), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR = "import pandas, scipy.stats, matplotlib.pyplot, seaborn"


def wall(command: list[str]) -> float:
    """Seconds `command` takes, run from the repository (its output discarded; it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", default="results/default")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    source = ROOT / args.study
    if not (source / "runs").is_dir():
        sys.exit(f"bench_report: {source} has no runs/ folder: sweep it first")
    with tempfile.TemporaryDirectory() as folder:
        study = Path(folder) / source.name
        shutil.copytree(source / "runs", study / "runs")
        shutil.copy2(source / "spec.toml", study / "spec.toml")
        times = {"floor": [], **{f"report --jobs {n}": [] for n in args.jobs}}
        for _ in range(args.repeats):
            times["floor"].append(wall([sys.executable, "-c", FLOOR]))
            for n in args.jobs:
                times[f"report --jobs {n}"].append(wall([sys.executable, "-m", "bnstudy", "report", str(study),
                                                         "--jobs", str(n)]))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.study}, {args.repeats} repeats, {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; median wall seconds:")
    for name, median in medians.items():
        ratio = "" if name == "floor" else f"  ({median / medians['floor']:.2f}x the floor)"
        print(f"  {name:<18} {median:6.2f} s{ratio}")
    print(json.dumps({"study": args.study, "repeats": args.repeats, "cores": os.cpu_count(),
                      "median_s": {k: round(v, 3) for k, v in medians.items()},
                      "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()}}))


if __name__ == "__main__":
    main()
