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
    # "  <kind:6> <transform:30> copies bits recall[ %] <false> of <queries>"
    rows = {(line[2:8].strip(), line[9:39].strip()): line[39:].split() for line in done.stdout.splitlines()
            if line.startswith(("  still ", "  video ")) and " of " in line}
    for kind, name in [("still", n) for n in ("jpeg q95", "jpeg q40", "resize 0.5x", "resize 1.5x", "crop 10 %",
                                               "logo overlay", "flip", "distinct pictures")] + \
            [("video", n) for n in ("h264 crf 35", "h264 0.5x crf 28", "crop 10 %", "flip", "distinct videos",
                                    "face swap: portrait")]:
        assert (kind, name) in rows, (kind, name, sorted(rows))
    assert rows["still", "jpeg q95"][:4] == ["4", "0", "100.0", "%"]  # copies, bits, recall: re-encoded only
    assert rows["video", "h264 crf 35"][2:4] == ["100.0", "%"]
    assert rows["still", "distinct pictures"][-3] == "0" and rows["video", "distinct videos"][-3] == "0"
    for figure in ("distance sweep", "CPU per media", "still (mean)", "video 2 s (mean)"):
        assert figure in done.stdout, figure
