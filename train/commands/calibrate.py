"""`dfmod-train calibrate`'s arguments; the work is `train.calibrate.run`, imported when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from train.commands import lazy


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "calibrate",
        help="choose the threshold for a target FPR on validation data; store it in the checkpoint",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="dfmod checkpoint (rewritten unless --out)")
    p.add_argument("--data", type=Path, required=True, help="prepared folder (manifest.jsonl) or manifest file")
    p.add_argument("--split", default="val", help="split to calibrate on")
    p.add_argument("--target-fpr", type=float, default=0.05, help="false-positive rate to stay within")
    p.add_argument(
        "--uncertain-band",
        type=float,
        default=0.05,
        help="scores within threshold ± band are labelled 'uncertain' by the worker",
    )
    p.add_argument("--level", choices=("video", "frame"), default="video", help="score level to calibrate")
    p.add_argument("--out", type=Path, default=None, help="write here instead of rewriting --checkpoint")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--batch-size", type=int, default=256, help="scoring batch size")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--backbone-weights", default=None, help="backbone file when the checkpoint names a file hash")
    p.set_defaults(func=lazy("train.calibrate"))
