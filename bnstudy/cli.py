"""The `bnstudy` command: run, sweep, status, report.

A user mistake raises UserError anywhere below; `main` prints it as one line,
`bnstudy: error: ...`, and returns 2. Nothing is written before the inputs are checked.
"""

from __future__ import annotations

import argparse
import sys

from bnstudy import __version__
from bnstudy.errors import UserError
from bnstudy.models import BN_IMPLS, VARIANTS
from bnstudy.spec import DEFAULT_PRECISE_BN_SAMPLES, OPTIMIZERS, RunConfig, SettingError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a UserError (one line, exit 2)
    instead of printing the usage block."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def flag(key: str) -> str:
    """The CLI flag of a setting: limit_train -> --limit-train."""
    return "--" + key.replace("_", "-")


# ---------------------------------------------------------------- bnstudy run
def add_run_parser(commands) -> None:
    p = commands.add_parser("run", help="train one run and write its per-epoch CSV and JSON",
                            description="Train one LeNet run on Fashion-MNIST; print one line per epoch; "
                                        "write OUT/runs/<run_id>.csv and .json when it ends.")  # fmt: skip
    p.add_argument("--variant", required=True, choices=VARIANTS, help="where BatchNorm goes")
    p.add_argument("--bn-impl", default="torch", choices=BN_IMPLS, help="nn.BatchNorm or the from-scratch one (default: torch)")
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS, help="default: adam")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    p.add_argument("--batch-size", type=int, default=256, help="default: 256")
    p.add_argument("--epochs", type=int, default=5, help="default: 5")
    p.add_argument("--seed", type=int, default=0, help="fixes initialisation and data order (default: 0)")
    p.add_argument("--limit-train", type=int, default=None, metavar="N", help="use the first N training images")
    p.add_argument("--limit-test", type=int, default=None, metavar="M", help="use the first M test images")
    p.add_argument("--precise-bn-samples", type=int, default=DEFAULT_PRECISE_BN_SAMPLES, metavar="K",
                   help=f"training images for the PreciseBN diagnostic (default: {DEFAULT_PRECISE_BN_SAMPLES})")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--data", default=None, metavar="DIR", help="folder with the Fashion-MNIST *-ubyte[.gz] files")
    p.add_argument("--out", default="results/single", metavar="DIR", help="results folder (default: results/single)")
    p.set_defaults(handler=cmd_run)


def format_epoch(row: dict, epochs: int) -> str:
    """One progress line for an epoch row."""
    line = (f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.4f}  "
            f"test_loss {row['test_loss']:.4f}  test_acc {row['test_acc']:.4f}")  # fmt: skip
    if row["test_acc_batch_stats"] is not None:
        line += f"  batch_stats {row['test_acc_batch_stats']:.4f}  precise_bn {row['test_acc_precise_bn']:.4f}"
    return line + f"  {row['train_seconds']:.1f}+{row['eval_seconds']:.1f} s  {row['samples_per_second']:,.0f} img/s"


def cmd_run(args) -> int:
    from bnstudy.data import load_fashion_mnist
    from bnstudy.runner import execute, resolve_device
    from bnstudy.store import RunStore, check_writable

    keys = ("variant", "bn_impl", "optimizer", "lr", "batch_size", "epochs", "seed", "limit_train", "limit_test",
            "precise_bn_samples")  # fmt: skip
    try:
        config = RunConfig(**{k: getattr(args, k) for k in keys})
    except SettingError as exc:
        raise UserError(f"{flag(exc.key)}: {exc.problem}") from None
    device = resolve_device(args.device)
    check_writable(args.out)
    data = load_fashion_mnist(args.data, device, config.limit_train, config.limit_test)
    print(f"{config.run_id} on {device}: {len(data.train_x):,} training / {len(data.test_x):,} test images", flush=True)
    rows, metadata = execute(config, data, on_epoch=lambda row: print(format_epoch(row, config.epochs), flush=True))
    try:
        csv_path, _ = RunStore(args.out).write_run(rows, metadata)
    except OSError as exc:
        raise UserError(f"{args.out}: cannot write results ({exc.strerror})") from None
    print(f"{metadata['status']}: {csv_path}")
    if metadata["status"] == "failed":
        print(metadata["error"], file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- bnstudy sweep / status
def add_study_location_args(p, set_help: str) -> None:
    """--out and --set, which sweep and status share: where a spec's results live and the
    overrides that change its runs (and so their ids)."""
    p.add_argument("--out", default=None, metavar="DIR", help="results folder (default: results/<name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def results_dir(study, out: str | None) -> str:
    """The results folder of a study: --out, else results/<name>."""
    return out or f"results/{study.name}"


def add_sweep_parser(commands) -> None:
    p = commands.add_parser("sweep", help="run a study's grid, skipping the runs already done",
                            description="Run every run of a TOML study spec that is not done yet, writing each "
                                        "run's CSV and JSON as it finishes; a killed sweep resumes where it "
                                        "stopped.")  # fmt: skip
    p.add_argument("spec", metavar="SPEC", help="study spec, e.g. experiments/quick.toml")
    add_study_location_args(p, "override a spec setting, e.g. --set epochs=2 --set grid.seed=[0] (repeatable)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="CPU worker processes (default: the cores) or GPUs to use (default: all); "
                        "a dask cluster uses all its workers")
    p.add_argument("--backend", default="local", choices=("local", "dask"), help="default: local")
    p.add_argument("--scheduler", default=None, metavar="ADDR", help="the dask scheduler, e.g. tcp://HOST:8786")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                   help="default: the spec's device, else auto (CUDA when available)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="on a GPU, train every run on its own instead of fusing runs of one shape into one network")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state; train and write nothing")
    p.add_argument("--data", default=None, metavar="DIR", help="folder with the Fashion-MNIST *-ubyte[.gz] files")
    p.set_defaults(handler=cmd_sweep)


def cmd_sweep(args) -> int:
    from bnstudy.runner import SweepOptions, sweep
    from bnstudy.spec import load_study

    study = load_study(args.spec, args.overrides)
    options = SweepOptions(out=results_dir(study, args.out), jobs=args.jobs, backend=args.backend,
                           scheduler=args.scheduler, device=args.device or study.device or "auto",
                           data_dir=args.data, dry_run=args.dry_run, fuse=args.fuse)  # fmt: skip
    return sweep(study, options)


# ---------------------------------------------------------------- bnstudy status
def add_status_parser(commands) -> None:
    p = commands.add_parser("status", help="done / diverged / failed / damaged / pending runs of a study, per variant",
                            description="Count a study's runs by state: give its spec (results in --out, "
                                        "default results/<name>) or its results folder (which holds the spec "
                                        "as run).")  # fmt: skip
    p.add_argument("target", metavar="SPEC|DIR", help="a study spec or a sweep's results folder")
    add_study_location_args(p, "the overrides the sweep ran with")
    p.set_defaults(handler=cmd_status)


def cmd_status(args) -> int:
    from pathlib import Path

    from bnstudy.spec import load_study
    from bnstudy.store import RunStore, format_status

    target = Path(args.target)
    if target.is_dir():
        store = RunStore(target)
        if not store.spec_path.is_file():
            raise UserError(f"{target}: no spec.toml here (not a sweep's results folder); give the study's spec file")
        study = load_study(store.spec_path, args.overrides)
    else:
        study = load_study(target, args.overrides)
        store = RunStore(results_dir(study, args.out))
    print(f"study {study.name} ({study.source}) in {store.root}")
    print(format_status(study.runs(), store))
    return 0


# ---------------------------------------------------------------- bnstudy report
def add_report_parser(commands) -> None:
    p = commands.add_parser("report", help="stability metrics, tables, figures and report.md of a study",
                            description="Read a study's finished runs (DIR/runs/) and write DIR/summary.csv, "
                                        "DIR/cells.csv, DIR/figures/*.png|svg and DIR/report.md.")  # fmt: skip
    p.add_argument("dir", metavar="DIR", help="a study's results folder, e.g. results/default")
    p.add_argument("--include-extra", action="store_true",
                   help="also report the done runs in DIR/runs/ that DIR/spec.toml does not hold (default: list them)")
    p.set_defaults(handler=cmd_report)


def cmd_report(args) -> int:
    from bnstudy.report import format_outputs, write_report  # pandas, seaborn, matplotlib: loaded only for this command

    print(format_outputs(write_report(args.dir, args.include_extra)))
    return 0


# ---------------------------------------------------------------- the command
def build_parser() -> Parser:
    parser = Parser(prog="bnstudy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bnstudy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(commands)
    add_sweep_parser(commands)
    add_status_parser(commands)
    add_report_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except UserError as exc:
        print(f"bnstudy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnstudy: interrupted; finished runs are kept, the rest will be redone", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
