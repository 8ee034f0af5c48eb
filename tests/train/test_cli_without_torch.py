"""`dfmod-train --help` and every sub-command's --help work without torch; a command that needs it says
in one line how to install it. Run in a subprocess in which the training extra cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from train.cli import COMMANDS
from train.commands import INSTALL_HINT, TRAIN_EXTRA

REPO = Path(__file__).resolve().parents[2]
BLOCK = "; ".join(f"sys.modules[{m!r}] = None" for m in TRAIN_EXTRA)  # None in sys.modules: import fails


def run_without_torch(*argv: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; {BLOCK}; from train.cli import main; sys.exit(main({list(argv)!r}))"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_help_of_every_command_works_without_torch() -> None:
    top = run_without_torch("--help")
    assert top.returncode == 0, top.stderr
    for name in COMMANDS:
        assert name in top.stdout
        sub = run_without_torch(name, "--help")
        assert sub.returncode == 0 and "usage: dfmod-train " + name in sub.stdout, (name, sub.stderr[-2000:])
        assert "Traceback" not in sub.stderr


@pytest.mark.parametrize(
    "argv", [["describe", "--arch", "tiny"], ["evaluate", "--checkpoint", "x.pt", "--data", "d", "--out", "o"]]
)
def test_a_command_that_needs_torch_says_how_to_install_it(argv: list[str]) -> None:
    res = run_without_torch(*argv)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs torch" in lines[0] and INSTALL_HINT in lines[0], res.stderr
