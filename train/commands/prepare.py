"""`dfmod-train prepare`'s arguments; the work is `train.data.prepare.run`, imported when it runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from train.commands import lazy
from train.data.benchmarks import ALL_FORMATS, READERS
from train.data.readers import FFPP_METHODS


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "prepare", help="decode media, detect and align faces (worker pipeline), write crops + manifest"
    )
    p.add_argument(
        "source", type=Path, help="FF++ root, a media manifest (CSV/JSONL), a real/ fake/ folder, or a test set root"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (crops/, manifest.jsonl)")
    p.add_argument(
        "--format",
        dest="fmt",
        choices=ALL_FORMATS,
        default=None,
        help="source layout (ffpp/manifest/folders guessed if unset; test sets: " + ", ".join(READERS) + ")",
    )
    p.add_argument("--frames", type=int, default=32, help="frames sampled evenly per video")
    p.add_argument("--detector", choices=("yunet", "scrfd", "haar"), default="yunet")
    p.add_argument("--weights-dir", type=Path, default=None, help="face-detector weights folder")
    p.add_argument("--faces-per-frame", type=int, default=1, help="largest N faces per frame (0 = all)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42, help="seed of the video-level split")
    p.add_argument("--ffpp-splits", type=Path, default=None, help="folder with FF++'s official train/val/test.json")
    p.add_argument(
        "--ffpp-methods",
        default=",".join(FFPP_METHODS),
        help="FF++ manipulation folders to read, comma-separated (FaceShifter, DeepFakeDetection by name)",
    )
    p.add_argument("--random-split", action="store_true", help="FF++ without official lists: random video split")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes (0 = inline)")
    p.set_defaults(func=lazy("train.data.prepare"))
