"""`dfmod-train benchmark`'s arguments; the work is `train.benchmark.run`, imported when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from train.commands import lazy


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "benchmark", help="score prepared cross-dataset test sets, compare with the paper's video AUROC"
    )
    p.add_argument("data", type=Path, nargs="+", help="prepared test-set folders (prepare --format celebdf, ...)")
    p.add_argument("--model", type=Path, required=True, help="dfmod checkpoint, or an exported Triton repository")
    p.add_argument("--out", type=Path, required=True, help="folder for benchmark.json and plots")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (checkpoints)")
    p.add_argument("--batch-size", type=int, default=64, help="scoring batch size")
    p.add_argument("--backbone-weights", default=None, help="backbone file when the checkpoint names a file hash")
    p.add_argument("--json", action="store_true", help="print benchmark.json instead of the table")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=lazy("train.benchmark"))
