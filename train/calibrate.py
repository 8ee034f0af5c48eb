"""`dfmod-train calibrate`: pick the decision threshold for a target false-positive rate on validation data.

The threshold is the lowest score at which the validation FPR stays <= the target (so the TPR is as high
as that constraint allows); video level by default because the worker labels media by the mean of its
frames. The result goes into the checkpoint's ``extra`` (``threshold``, ``uncertain_band`` and a
``calibration`` record), which `export` writes into the Triton model config.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train import metrics
from train.augment import eval_transform
from train.data.dataset import CropDataset
from train.evaluate import resolve_device, score_dataset


@dataclass(frozen=True)
class Calibration:
    threshold: float
    uncertain_band: float
    level: str
    split: str
    target_fpr: float
    achieved_fpr: float
    tpr: float
    n_real: int
    n_fake: int

    def as_extra(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "split": self.split,
            "target_fpr": self.target_fpr,
            "achieved_fpr": self.achieved_fpr,
            "tpr": self.tpr,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
        }


def choose_threshold(
    scores: np.ndarray, labels: np.ndarray, target_fpr: float, uncertain_band: float, level: str, split: str
) -> Calibration:
    """The calibration of one score set (already at the chosen level)."""
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError("target FPR must be in [0, 1]")
    thr = metrics.threshold_for_fpr(scores, labels, target_fpr)
    fpr, tpr = metrics.fpr_tpr_at(scores, labels, thr)
    return Calibration(
        thr,
        uncertain_band,
        level,
        split,
        target_fpr,
        fpr,
        tpr,
        int((labels == 0).sum()),
        int((labels == 1).sum()),
    )


def calibrate(
    checkpoint: Path,
    data: Path,
    split: str = "val",
    target_fpr: float = 0.05,
    uncertain_band: float = 0.05,
    level: str = "video",
    out: Path | None = None,
    device: str = "auto",
    batch_size: int = 256,
    workers: int = 0,
    backbone_weights: str | None = None,
) -> Calibration:
    """Score `split`, choose the threshold, and rewrite the checkpoint (or write `out`) with it."""
    from train.checkpoint import load_checkpoint, save_checkpoint

    dev = resolve_device(device)
    detector, meta = load_checkpoint(checkpoint, device=dev, backbone_weights=backbone_weights)
    dataset = CropDataset(data, split=split, transform=eval_transform)
    if len(dataset) == 0:
        raise ValueError(f"no crops in {data} for split {split!r}")
    scores = score_dataset(detector, dataset, dev, batch_size, workers, desc=f"calibrate {split}")
    labels = np.asarray(dataset.labels, dtype=np.int64)
    if level == "video":
        _, scores, labels = metrics.video_level(scores, labels, dataset.video_ids)
    elif level != "frame":
        raise ValueError(f"level must be 'video' or 'frame', not {level!r}")
    cal = choose_threshold(scores, labels, target_fpr, uncertain_band, level, split)
    extra = dict(meta.get("extra", {}))
    extra.update({"threshold": cal.threshold, "uncertain_band": cal.uncertain_band, "calibration": cal.as_extra()})
    save_checkpoint(out or checkpoint, detector.cpu(), meta.get("config", {}), extra)
    return cal


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "calibrate",
        help="choose the threshold for a target FPR on validation data; store it in the checkpoint",
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="prepared folder (manifest.jsonl) or manifest file")
    p.add_argument("--split", default="val")
    p.add_argument("--target-fpr", type=float, default=0.05)
    p.add_argument(
        "--uncertain-band",
        type=float,
        default=0.05,
        help="scores within threshold ± band are labelled 'uncertain' by the worker",
    )
    p.add_argument("--level", choices=("video", "frame"), default="video")
    p.add_argument("--out", type=Path, default=None, help="write here instead of rewriting --checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--backbone-weights", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cal = calibrate(
        args.checkpoint,
        args.data,
        args.split,
        args.target_fpr,
        args.uncertain_band,
        args.level,
        args.out,
        args.device,
        args.batch_size,
        args.workers,
        args.backbone_weights,
    )
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"calibration ({cal.level} level, split {cal.split})")
    for col in ("threshold", "uncertain band", "target FPR", "achieved FPR", "TPR", "real", "fake"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{cal.threshold:.6f}",
        f"±{cal.uncertain_band:.3f}",
        f"{cal.target_fpr:.4f}",
        f"{cal.achieved_fpr:.4f}",
        f"{cal.tpr:.4f}",
        str(cal.n_real),
        str(cal.n_fake),
    )
    Console().print(table)
    print(f"threshold {cal.threshold:.6f} written to {args.out or args.checkpoint}")
    return 0
