"""`make bench` in its reduced mode, on the session's stack: every part runs and prints (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness import Stack

from .conftest import REPO


def test_quick_bench_prints_every_figure(stack: Stack, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "local" / "bench.py"), "--quick", "--stack-dir", str(stack.stack_dir),
         "--media-dir", str(tmp_path / "media")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    table = done.stdout
    for media in ("480p 2 s", "720p 2 s", "1080p 2 s", "480p 8 s", "720p 8 s", "1080p 8 s"):
        row = next(line for line in table.splitlines() if line.startswith(media))
        # "found" (before the two kf columns): 32 sampled frames, one face each, so the stages really ran
        assert row.split()[-3] == "32", row
    for figure in ("bare model, Triton driven directly", "naive decode->detect->align->infer", "worker / bare model",
                   "worker / naive loop", "mean Triton batch", "cached repeat", "broker ack -> verdict",
                   "worker RSS MB", "worker RSS through the stills phase", "720p 8 s / 720p 2 s CPU: exact",
                   "sizing: vCPUs"):
        assert figure in table
    assert "nan" not in table
