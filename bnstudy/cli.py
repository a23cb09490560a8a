"""The `bnstudy` command: run, sweep, status, report.

A user mistake raises UserError anywhere below; `main` prints it as one line,
`bnstudy: error: ...`, and returns 2. Nothing is written before the inputs are checked:
every path argument as it is parsed (store.check_path: a name too long for its file system
would otherwise surface as a traceback deep inside a command), the folders a command writes
before it trains (store.check_writable).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from bnstudy import __version__
from bnstudy.errors import Terminated, UserError, printable
from bnstudy.config.settings import REQUIRED, RUN_SETTINGS, SETTINGS, RunConfig, SettingError
from bnstudy.results.store import check_path


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
    add_setting_flags(p)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--data", type=check_path, default=None, metavar="DIR",
                   help="folder with the Fashion-MNIST *-ubyte[.gz] files")
    p.add_argument("--out", type=check_path, default="results/single", metavar="DIR",
                   help="results folder (default: results/single)")
    p.set_defaults(handler=cmd_run)


def add_setting_flags(p) -> None:
    """One flag per run setting of the declaration (bnstudy.config.settings), with its type,
    choices, default and help; `study` is --out's business."""
    for setting in SETTINGS:
        if not setting.identity:
            continue
        default = setting.run_default if setting.default is REQUIRED else setting.default
        shown = "all" if default is None else default
        p.add_argument(flag(setting.name), type=setting.kind, choices=setting.choices, metavar=setting.metavar,
                       required=default is REQUIRED, default=None if default is REQUIRED else default,
                       help=setting.help + ("" if default is REQUIRED else f" (default: {shown})"))  # fmt: skip


def format_epoch(row: dict, epochs: int) -> str:
    """One progress line for an epoch row."""
    line = (f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.4f}  "
            f"test_loss {row['test_loss']:.4f}  test_acc {row['test_acc']:.4f}")  # fmt: skip
    if row["test_acc_batch_stats"] is not None:
        line += f"  batch_stats {row['test_acc_batch_stats']:.4f}  precise_bn {row['test_acc_precise_bn']:.4f}"
    return line + f"  {row['train_seconds']:.1f}+{row['eval_seconds']:.1f} s  {row['samples_per_second']:,.0f} img/s"


def cmd_run(args) -> int:
    from bnstudy.engine.data import load_fashion_mnist
    from bnstudy.sweep.backends import resolve_device
    from bnstudy.results.runfiles import RunStatus
    from bnstudy.engine.runner import execute
    from bnstudy.results.store import RunStore, check_writable, writing

    try:
        config = RunConfig(**{key: getattr(args, key) for key in RUN_SETTINGS})
    except SettingError as exc:
        raise UserError(f"{flag(exc.key)}: {exc.problem}") from None
    device = resolve_device(args.device)
    store = RunStore(args.out)
    check_writable(store.root, store.runs_dir)
    data = load_fashion_mnist(args.data, device, config.limit_train, config.limit_test)
    print(f"{config.run_id} on {device}: {len(data.train_x):,} training / {len(data.test_x):,} test images", flush=True)
    outcome = execute(config, data, on_epoch=lambda row: print(format_epoch(row, config.epochs), flush=True))
    with writing(store.root):
        csv_path, _ = store.write_run(outcome)
    print(f"{outcome.status}: {csv_path}")
    if outcome.status is RunStatus.FAILED:
        print(outcome.metadata["error"], file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- bnstudy sweep / status
def add_study_location_args(p, set_help: str) -> None:
    """--out and --set, which sweep and status share: where a spec's results live and the
    overrides that change its runs (and so their ids)."""
    p.add_argument("--out", type=check_path, default=None, metavar="DIR",
                   help="results folder (default: results/<name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def results_dir(study, out: str | None) -> str:
    """The results folder of a study: --out, else results/<name>."""
    return out or f"results/{study.name}"


def add_sweep_parser(commands) -> None:
    # no torch, no joblib: every command builds this parser
    from bnstudy.sweep.backends import BACKENDS, DEFAULT_BACKEND

    p = commands.add_parser("sweep", help="run a study's grid, skipping the runs already done",
                            description="Run every run of a TOML study spec that is not done yet, writing each "
                                        "run's CSV and JSON as it finishes; a killed sweep resumes where it "
                                        "stopped.")  # fmt: skip
    p.add_argument("spec", type=check_path, metavar="SPEC", help="study spec, e.g. experiments/quick.toml")
    add_study_location_args(p, "override a spec setting, e.g. --set epochs=2 --set grid.seed=[0] (repeatable)")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=tuple(BACKENDS),
                   help=f"where the runs train (default: {DEFAULT_BACKEND}; each one's flags below)")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                   help="default: the spec's device, else auto (CUDA when available)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="on a GPU, train every run on its own instead of fusing runs of one shape into one network")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state; train and write nothing")
    p.add_argument("--allow-mixed-workers", action="store_true",
                   help="write the results of workers on another bnstudy version or git commit than this "
                        "command's (default: record such runs failed)")
    p.add_argument("--data", type=check_path, default=None, metavar="DIR",
                   help="folder with the Fashion-MNIST *-ubyte[.gz] files")
    for name, backend in BACKENDS.items():
        backend.add_flags(p.add_argument_group(f"--backend {name}", backend.summary))
    p.set_defaults(handler=cmd_sweep)


def cmd_sweep(args) -> int:
    from bnstudy.sweep.backends import chosen_options
    from bnstudy.sweep.driver import SweepOptions, sweep
    from bnstudy.config.spec import load_study

    study = load_study(args.spec, args.overrides)
    options = SweepOptions(out=results_dir(study, args.out), backend=args.backend, backend_options=chosen_options(args),
                           device=args.device or study.device or "auto", data_dir=args.data, dry_run=args.dry_run,
                           fuse=args.fuse, allow_mixed_workers=args.allow_mixed_workers)  # fmt: skip
    return sweep(study, options)


# ---------------------------------------------------------------- bnstudy status
def add_status_parser(commands) -> None:
    p = commands.add_parser("status", help="done / diverged / failed / damaged / pending runs of a study, per variant",
                            description="Count a study's runs by state: give its spec (results in --out, "
                                        "default results/<name>) or its results folder (which holds the spec "
                                        "as run).")  # fmt: skip
    p.add_argument("target", type=check_path, metavar="SPEC|DIR", help="a study spec or a sweep's results folder")
    add_study_location_args(p, "the overrides the sweep ran with")
    p.set_defaults(handler=cmd_status)


def cmd_status(args) -> int:
    from bnstudy.config.spec import load_study
    from bnstudy.results.store import RunStore, format_status

    target = args.target
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
                                        "DIR/cells.csv, DIR/figures/*.png and DIR/report.md.")  # fmt: skip
    p.add_argument("dir", type=check_path, metavar="DIR", help="a study's results folder, e.g. results/default")
    p.add_argument("--include-extra", action="store_true",
                   help="also report the done runs in DIR/runs/ that DIR/spec.toml does not hold (default: list them)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="processes that draw the figures (default: one per core, at most 4, on Linux; 1 elsewhere)")
    p.set_defaults(handler=cmd_report)


def cmd_report(args) -> int:
    from bnstudy.report.forked import check_jobs
    # pandas, seaborn, matplotlib: loaded only for this command
    from bnstudy.report.publish import format_outputs, write_report

    if args.jobs is not None:
        check_jobs(args.jobs)
    print(format_outputs(write_report(args.dir, args.include_extra, args.jobs)))
    return 0


# ---------------------------------------------------------------- bnstudy plan
def add_plan_parser(commands) -> None:
    p = commands.add_parser("plan", help="how many seeds each claim of a study needs to detect a difference",
                            description="From the spread of a study's finished runs, the seeds each claim of its "
                                        "report needs to detect DIFF with 80%% power after Holm's correction. "
                                        "Trains nothing.")  # fmt: skip
    p.add_argument("dir", type=check_path, metavar="DIR", help="a study's results folder, e.g. results/notebook")
    p.add_argument("--detect", default="1pp", metavar="DIFF", help="the difference to detect, e.g. 1pp or 0.5pp "
                   "(default: 1pp)")  # fmt: skip
    p.set_defaults(handler=cmd_plan)


def cmd_plan(args) -> int:
    from bnstudy.results.aggregate import load_results
    from bnstudy.report.analysis import analyze
    from bnstudy.report.plan import format_plan, parse_difference

    detect = parse_difference(args.detect)  # before the study loads: a typo costs nothing
    print(format_plan(analyze(load_results(args.dir)), detect))
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
    add_plan_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    with sigterm_as_interrupt():
        return _main(argv)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While in the block, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread,
    so that `kill PID` stops a sweep as Ctrl-C does; a second SIGTERM kills at once. Only the
    main thread can set handlers: elsewhere (a sweep in a thread) SIGTERM stays as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        status = args.handler(args)
        sys.stdout.flush()  # here, so that a reader gone away is seen below, not at exit
        return status
    except UserError as exc:
        print(f"bnstudy: error: {printable(str(exc))}", file=sys.stderr)  # one line, whatever a path holds
        return 2
    except BrokenPipeError:  # `bnstudy sweep --dry-run ... | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 128 + signal.SIGPIPE  # what a program that SIGPIPE ended returns to the shell
    except KeyboardInterrupt as exc:
        how, status = ("terminated (SIGTERM)", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(f"bnstudy: {how}; finished runs are kept, the rest will be redone", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
