"""The package's shape: the commands that do not train never import torch (at run time,
here; for every module, the import contract in pyproject.toml that `lint-imports` checks,
run here and by `make test`), and no line of the repository's *.py files is over 120
characters."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bnstudy"


@pytest.mark.parametrize("code", [
    "from bnstudy.cli import main; main(['--help'])",
    "import bnstudy.report.render, bnstudy.config.spec, bnstudy.results.store, bnstudy.sweep.driver, "
    "bnstudy.sweep.costs",
])  # fmt: skip
def test_the_commands_that_do_not_train_do_not_import_torch(code):
    probe = f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_status_runs_without_torch(tmp_path):
    fixture = Path(__file__).resolve().parent / "fixtures" / "v0_1_study"
    probe = ("import sys\nfrom bnstudy.cli import main\n"
             f"assert main(['status', {str(fixture)!r}]) == 0\nprint('torch' in sys.modules)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package and pyproject.toml under `root`."""
    lint = Path(sys.executable).with_name("lint-imports")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    return subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=root, env=env)


def test_the_import_contracts_hold():
    result = lint_imports(PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("report/wording.py", "import torch", "never import torch"),  # the torch boundary
    ("config/spec.py", "from bnstudy.engine import train", "never import torch"),  # ... through the engine
    ("results/store.py", "from bnstudy.report import wording", "downward only"),  # an upward import
])  # fmt: skip
def test_the_import_contracts_fail_on_a_forbidden_import(tmp_path, module, line, broken):
    shutil.copytree(PACKAGE, tmp_path / "bnstudy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PACKAGE.parent / "pyproject.toml", tmp_path)
    path = tmp_path / "bnstudy" / module
    path.write_text(path.read_text() + f"\n{line}  # planted by the test\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    assert any(line.endswith(" BROKEN") and broken in line for line in result.stdout.splitlines()), result.stdout


LINE_LIMIT = 120  # characters: the code style's line length


def python_files(root: Path) -> list[Path]:
    """The *.py files of the repository at `root`: the ones git tracks (`git ls-files`), or,
    where git or its checkout is missing, every one under bnstudy/, tests/ and bench/."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", "*.py"], capture_output=True, text=True, cwd=root,
                                check=True).stdout.split("\0")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):  # no git, or not a checkout
        listed = []
    paths = [root / name for name in listed if name]
    if not paths:
        paths = sorted(path for folder in ("bnstudy", "tests", "bench") for path in (root / folder).rglob("*.py"))
    return [path for path in paths if path.is_file()]  # a tracked file deleted in the work tree has no lines


def test_no_line_is_over_120_characters():
    """Every line of every *.py file, `# fmt: skip` ones included, fits in LINE_LIMIT characters."""
    root = PACKAGE.parent
    paths = python_files(root)
    assert paths, f"no *.py files found under {root}"
    long = [f"{path.relative_to(root)}:{number}:{len(line)}" for path in paths
            for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1)
            if len(line) > LINE_LIMIT]  # fmt: skip
    assert not long, f"{len(long)} lines over {LINE_LIMIT} characters (file:line:length):\n" + "\n".join(long)
