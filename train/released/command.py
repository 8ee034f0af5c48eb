"""`dfmod-train import SOURCE --out CHECKPOINT`: a released detector -> one dfmod checkpoint.

SOURCE is a local `model.ckpt`, `model.torchscript`, GenD folder, or a hub repo id
(`yermandy/GenD_CLIP_L_14`, `yermandy/deepfake-detection`). The checkpoint is written atomically and only
after the import reproduced the release's own forward, so a refused import leaves nothing in `--out`.
Released detectors keep the authors' decision rule, p(fake) >= 0.5, until `calibrate` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from train.commands.import_release import register as register  # the parser is defined without torch
from train.released.errors import ReleaseError

#: The authors decide at p(fake) = 0.5 (argmax of the softmax, yermandy/deepfake-detection src/model/dfdet.py:377-378).
RELEASED_THRESHOLD = 0.5


@dataclass
class ImportReport:
    out: str
    format: str
    source: str
    revision: str
    sha256: str
    arch: str
    head_norm: bool
    reference: str
    max_abs_diff: float
    checkpoint_sha256: str
    seconds: float


def import_release(source: str, out: Path, *, revision: str | None = None, filename: str | None = None) -> ImportReport:
    """Read, map, check and write; raises ReleaseError (nothing written) on anything not understood."""
    from train.checkpoint import save_checkpoint
    from train.released.build import build_detector
    from train.released.formats import read_release

    start = time.perf_counter()
    if out.is_dir():
        raise ReleaseError(out, "--out is a folder; give the checkpoint file to write")
    release = read_release(source, revision=revision, filename=filename)
    detector, report = build_detector(release)
    extra = {"threshold": RELEASED_THRESHOLD, "uncertain_band": 0.0, "threshold_source": "released (authors' 0.5)"}
    checkpoint_sha = save_checkpoint(out, detector, {}, extra)
    return ImportReport(
        out=str(out),
        format=release.format,
        source=release.source,
        revision=release.revision,
        sha256=release.sha256,
        arch=report.arch,
        head_norm=report.head_norm,
        reference=report.reference,
        max_abs_diff=report.max_abs_diff,
        checkpoint_sha256=checkpoint_sha,
        seconds=time.perf_counter() - start,
    )


def run(args: argparse.Namespace) -> int:
    try:
        report = import_release(args.source, args.out, revision=args.revision, filename=args.file)
    except ReleaseError as e:
        print(f"dfmod-train import: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        rev = f"@{report.revision}" if report.revision else ""
        print(
            f"imported {report.format} {report.source}{rev} (sha256 {report.sha256[:16]}) as {report.arch}, "
            f"head {'L2-normalised' if report.head_norm else 'raw feature'}; p(fake) vs {report.reference}: "
            f"max abs diff {report.max_abs_diff:.2e}; wrote {report.out} in {report.seconds:.1f} s"
        )
    return 0
