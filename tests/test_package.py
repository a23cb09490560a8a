"""The package's shape: the commands that do not train never import torch (at run time,
here; for every module, the import contract in pyproject.toml that `lint-imports` checks,
run here and by `make test`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bnstudy"


@pytest.mark.parametrize("code", [
    "from bnstudy.cli import main; main(['--help'])",
    "import bnstudy.report, bnstudy.spec, bnstudy.store, bnstudy.sweep, bnstudy.costs",
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


def test_the_import_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout
