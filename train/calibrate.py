"""`dfmod-train calibrate`: pick the decision threshold for a target false-positive rate on validation data.

The threshold is the lowest score at which the validation FPR stays <= the target (so the TPR is as high
as that constraint allows); video level by default because the worker labels media by the mean of its
frames, by the worker's own rule (`worker.scoring.aggregate.media_score`). The result goes into the checkpoint's
``extra`` (``threshold``, ``uncertain_band`` and a ``calibration`` record), which `export` writes into
the Triton model config.

A target FPR can only be resolved with enough real items: with n reals the achievable FPRs are k/n, so
fewer than 1/FPR reals cannot tell the target apart from 0. Such a calibration still runs, but it warns
and records the warning (``calibration.warnings``). The threshold is always a probability in [0, 1].
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train import metrics
from train.augment import eval_transform
from train.commands.calibrate import register as register  # the parser is defined without torch
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
    n_uncertain: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_extra(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "split": self.split,
            "target_fpr": self.target_fpr,
            "achieved_fpr": self.achieved_fpr,
            "tpr": self.tpr,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
            "n_uncertain": self.n_uncertain,
            "warnings": list(self.warnings),
        }


def min_reals_for(target_fpr: float) -> float:
    """The fewest real items whose FPR steps (1/n) can resolve `target_fpr` (inf for a target of 0)."""
    return float(math.ceil(1.0 / target_fpr)) if target_fpr > 0 else math.inf


def choose_threshold(
    scores: np.ndarray, labels: np.ndarray, target_fpr: float, uncertain_band: float, level: str, split: str
) -> Calibration:
    """The calibration of one score set (already at the chosen level)."""
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError("target FPR must be in [0, 1]")
    if not 0.0 <= uncertain_band <= 0.5:
        raise ValueError("uncertain band must be in [0, 0.5]")
    thr = metrics.threshold_for_fpr(scores, labels, target_fpr)
    fpr, tpr = metrics.fpr_tpr_at(scores, labels, thr)
    n_real, n_fake = int((labels == 0).sum()), int((labels == 1).sum())
    unit = "videos" if level == "video" else "crops"
    warnings: list[str] = []
    if target_fpr == 0.0 or n_real < min_reals_for(target_fpr):
        need = "more than any finite number of" if target_fpr == 0.0 else f"at least {min_reals_for(target_fpr):.0f}"
        warnings.append(
            f"split {split!r} has {n_real} real {unit}; resolving a target FPR of {target_fpr:g} needs {need} "
            f"(the FPR moves in steps of 1/{max(n_real, 1)}): the threshold is not trustworthy at that target"
        )
    if fpr > target_fpr:
        warnings.append(
            f"achieved FPR {fpr:.4f} exceeds the target {target_fpr:g}: real {unit} scored 1.0 and a "
            "threshold cannot exceed 1"
        )
    return Calibration(
        thr,
        uncertain_band,
        level,
        split,
        target_fpr,
        fpr,
        tpr,
        n_real,
        n_fake,
        metrics.count_uncertain(scores, thr, uncertain_band),
        warnings,
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

    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError("target FPR must be in [0, 1]")
    if level not in ("video", "frame"):
        raise ValueError(f"level must be 'video' or 'frame', not {level!r}")
    dev = resolve_device(device)
    dataset = CropDataset(data, split=split, transform=eval_transform)
    if len(dataset) == 0:
        raise ValueError(f"{dataset.manifest_path}: no crops for split {split!r}")
    detector, meta = load_checkpoint(checkpoint, device=dev, backbone_weights=backbone_weights)
    scores = score_dataset(detector, dataset, dev, batch_size, workers, desc=f"calibrate {split}")
    labels = np.asarray(dataset.labels, dtype=np.int64)
    if level == "video":
        _, scores, labels = metrics.video_level(scores, labels, dataset.video_ids, dataset.frame_indices)
    elif level != "frame":
        raise ValueError(f"level must be 'video' or 'frame', not {level!r}")
    cal = choose_threshold(scores, labels, target_fpr, uncertain_band, level, split)
    extra = dict(meta.get("extra", {}))
    extra.update({"threshold": cal.threshold, "uncertain_band": cal.uncertain_band, "calibration": cal.as_extra()})
    save_checkpoint(out or checkpoint, detector.cpu(), meta.get("config", {}), extra)
    return cal


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
    cols = ("threshold", "uncertain band", "in band", "target FPR", "achieved FPR", "TPR", "real", "fake")
    for col in cols:
        table.add_column(col, justify="right")
    table.add_row(
        f"{cal.threshold:.6f}",
        f"±{cal.uncertain_band:.3f}",
        str(cal.n_uncertain),
        f"{cal.target_fpr:.4f}",
        f"{cal.achieved_fpr:.4f}",
        f"{cal.tpr:.4f}",
        str(cal.n_real),
        str(cal.n_fake),
    )
    Console().print(table)
    for w in cal.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"threshold {cal.threshold:.6f} written to {args.out or args.checkpoint}")
    return 0
