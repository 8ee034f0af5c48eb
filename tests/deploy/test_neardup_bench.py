"""`make bench-neardup` in its reduced mode: every row prints, mild copies are found and distinct media are not."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO


def test_quick_neardup_bench_prints_every_row() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "local" / "neardup_bench.py"), "--quick"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = {" ".join(line.split()[1:-6]): line.split() for line in done.stdout.splitlines()
            if line.startswith(("  still ", "  video ")) and " of " in line}
    for name in ("jpeg q95", "jpeg q40", "resize 0.5x", "resize 1.5x", "crop 10 %", "logo overlay", "flip",
                 "h264 crf 35", "h264 0.5x crf 28", "distinct pictures", "distinct videos", "face swap: portrait"):
        assert name in rows, (name, sorted(rows))
    assert rows["jpeg q95"][-6:-3] == ["0", "100.0", "%"]        # bits, recall: the same picture re-encoded
    assert rows["h264 crf 35"][-5:-3] == ["100.0", "%"]
    assert rows["distinct pictures"][-3] == "0" and rows["distinct videos"][-3] == "0"  # no false match
    for figure in ("distance sweep", "CPU per media", "still (mean)", "video 2 s (mean)"):
        assert figure in done.stdout, figure
