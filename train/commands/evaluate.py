"""`dfmod-train evaluate`'s arguments; the work is `train.evaluate.run`, imported when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from train.commands import lazy


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "evaluate", help="frame/video AUROC, AP, EER, accuracy per dataset; metrics.json and plots"
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="dfmod checkpoint to evaluate")
    p.add_argument("--data", type=Path, required=True, help="prepared folder (manifest.jsonl) or manifest file")
    p.add_argument("--split", default="test", help="split to evaluate ('all' for every crop)")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json and plots")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--batch-size", type=int, default=256, help="scoring batch size")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--backbone-weights", default=None, help="backbone file when the checkpoint names a file hash")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=lazy("train.evaluate"))
