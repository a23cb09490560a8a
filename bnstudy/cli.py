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


# ---------------------------------------------------------------- the command
def build_parser() -> Parser:
    parser = Parser(prog="bnstudy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bnstudy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(commands)
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
