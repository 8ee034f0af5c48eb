"""`dfmod-train evaluate`: frame- and video-level AUROC, AP, EER and accuracy per dataset.

Writes ``metrics.json``, ``frame_scores.csv`` (one row per crop, for later analysis) and PNG plots (ROC
curves, score histograms) into the output folder, and prints a table. The accuracy threshold is the
checkpoint's calibrated ``extra["threshold"]`` when present, else 0.5; items within its uncertain band
are counted (``n_uncertain``). Video scores follow the worker's rule (`worker.scoring.aggregate.media_score`).
``metrics.json`` also records the checkpoint's recipe and training config, so a number can always be
traced back to how the model was trained.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from train import metrics
from train.augment import eval_transform
from train.commands.evaluate import register as register  # the parser is defined without torch
from train.data.dataset import CropDataset, collate
from train.model import DeepfakeDetector, normalise

ALL = "all"

#: What each key of a metrics row means (written into metrics.json so nobody confuses AP with mAP).
METRIC_DEFINITIONS = {
    "auroc": "area under the ROC curve",
    "ap": "average precision of the fake class (scikit-learn definition)",
    "map": "reference mAP: mean over the real and fake classes of average precision (deepfake-detection val/mAP)",
    "eer": "EER at the ROC point where FPR and FNR are closest (eer_threshold is its score)",
    "eer_interp": "reference EER: FNR = FPR on the linearly interpolated ROC (brentq)",
    "accuracy": "accuracy of score >= threshold -> fake",
    "n_uncertain": "items within uncertain_band of threshold (labelled 'uncertain' by the worker)",
}


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def autocast_for(device: str, precision: str = "bf16-mixed") -> Any:
    """bf16 autocast on CUDA for ``bf16-mixed`` (the published setting); CPU and ``32`` run in fp32
    (bf16 on CPU is slow and lossy)."""
    if device.startswith("cuda") and precision == "bf16-mixed":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def score_dataset(
    detector: DeepfakeDetector,
    dataset: CropDataset,
    device: str,
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = True,
    desc: str = "score",
    precision: str = "bf16-mixed",
) -> npt.NDArray[np.float64]:
    """p(fake) for every crop of `dataset`, in dataset order (whatever order batches arrive in)."""
    was_training = detector.training
    detector.eval()
    out = np.full(len(dataset), np.nan, dtype=np.float64)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    for images, _, indices in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        x = normalise(images.permute(0, 2, 3, 1).to(device, non_blocking=True))
        with autocast_for(device, precision):
            logits, _ = detector(x)
        out[indices.numpy()] = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
    detector.train(was_training)
    return out


@dataclass
class LevelScores:
    """Scores and labels at one level (frame or video) for one dataset name."""

    scores: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]


def by_dataset(scores: npt.NDArray[np.float64], dataset: CropDataset) -> dict[str, dict[str, LevelScores]]:
    """{dataset name or 'all': {"frame": ..., "video": ...}} (video score = mean of its frames)."""
    labels = np.asarray(dataset.labels, dtype=np.int64)
    names = np.asarray(dataset.datasets)
    vids = dataset.video_ids
    groups: dict[str, npt.NDArray[np.bool_]] = {ALL: np.ones(len(scores), dtype=bool)}
    if len(set(names.tolist())) > 1:
        groups |= {n: names == n for n in sorted(set(names.tolist()))}
    out: dict[str, dict[str, LevelScores]] = {}
    for name, mask in groups.items():
        idx = np.flatnonzero(mask)
        frames = dataset.frame_indices
        _, v_scores, v_labels = metrics.video_level(
            scores[idx], labels[idx], [vids[i] for i in idx], [frames[i] for i in idx]
        )
        out[name] = {"frame": LevelScores(scores[idx], labels[idx]), "video": LevelScores(v_scores, v_labels)}
    return out


def compute_metrics(
    levels: dict[str, dict[str, LevelScores]], threshold: float, uncertain_band: float = 0.0
) -> dict[str, dict[str, dict[str, float]]]:
    return {
        name: {lvl: metrics.summary(ls.scores, ls.labels, threshold, uncertain_band) for lvl, ls in per.items()}
        for name, per in levels.items()
    }


def json_safe(obj: Any) -> Any:
    """NaN/inf -> null, so metrics.json is strict JSON (a one-class split has no AUROC)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _fmt(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.2f}"


def print_table(results: dict[str, dict[str, dict[str, float]]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cols = ("dataset", "level", "n", "fake", "AUROC", "AP(fake)", "mAP(2-class)", "EER", "EER(interp)", "Acc")
    for col in (*cols, "uncertain"):
        table.add_column(col, justify="left" if col in ("dataset", "level") else "right")
    for name, per in results.items():
        for lvl, m in per.items():
            table.add_row(
                name,
                lvl,
                str(int(m["n"])),
                str(int(m["n_fake"])),
                _fmt(m["auroc"]),
                _fmt(m["ap"]),
                _fmt(m["map"]),
                _fmt(m["eer"]),
                _fmt(m["eer_interp"]),
                _fmt(m["accuracy"]),
                str(int(m["n_uncertain"])),
            )
    Console().print(table)


def write_frame_scores(path: Path, dataset: CropDataset, scores: Sequence[float]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "video_id", "dataset", "frame_index", "label", "score"])
        for rec, s in zip(dataset.records, scores, strict=True):
            w.writerow([rec.path, rec.video_id, rec.dataset, rec.frame_index, rec.label, f"{s:.6f}"])


def coverage(data: Path, dataset: CropDataset) -> dict[str, Any] | None:
    """For a prepared benchmark test set (listing.json): videos scored out of the official list, and
    why the rest were dropped, so a score is never read as covering more than it does."""
    listing_path = dataset.manifest_path.parent / "listing.json"
    if not listing_path.is_file():
        return None
    listing = json.loads(listing_path.read_text(encoding="utf-8"))
    scored = len(set(dataset.video_ids))
    dropped: dict[str, int] = {}
    for m in listing.get("missing", []):
        dropped[m.get("reason", "not_on_disk")] = dropped.get(m.get("reason", "not_on_disk"), 0) + 1
    for reason in listing.get("dropped", {}).values():
        dropped[reason] = dropped.get(reason, 0) + 1
    return {
        "benchmark": listing.get("benchmark"),
        "videos_listed": listing.get("videos_listed"),
        "videos_scored": scored,
        "dropped": dropped,
    }


def evaluate(
    checkpoint: Path,
    data: Path,
    out: Path,
    split: str | None = "test",
    device: str = "auto",
    batch_size: int = 256,
    workers: int = 0,
    backbone_weights: str | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Score a split, write metrics.json / frame_scores.csv / plots, return the metrics document."""
    from train.checkpoint import load_checkpoint

    split_name = split or ALL
    dev = resolve_device(device)
    dataset = CropDataset(data, split=split, transform=eval_transform)
    if len(dataset) == 0:
        raise ValueError(f"{dataset.manifest_path}: no crops for split {split_name!r}")
    detector, meta = load_checkpoint(checkpoint, device=dev, backbone_weights=backbone_weights)
    extra = meta.get("extra", {})
    threshold = float(extra.get("threshold", 0.5))
    band = float(extra.get("uncertain_band", 0.0))
    scores = score_dataset(detector, dataset, dev, batch_size, workers, desc=f"evaluate {split_name}")
    levels = by_dataset(scores, dataset)
    results = compute_metrics(levels, threshold, band)
    out.mkdir(parents=True, exist_ok=True)
    config = meta.get("config", {})
    doc = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": meta.get("sha256"),
        "arch": meta.get("arch"),
        "weights": meta.get("weights"),
        "data": str(data),
        "split": split_name,
        "threshold": threshold,
        "threshold_source": "checkpoint" if "threshold" in extra else "default 0.5",
        "uncertain_band": band,
        "metric_definitions": METRIC_DEFINITIONS,
        "training": {"recipe": config.get("recipe"), "config": config, "imported": meta.get("imported")},
        "metrics": results,
        "coverage": coverage(data, dataset),
    }
    (out / "metrics.json").write_text(json.dumps(json_safe(doc), indent=2) + "\n", encoding="utf-8")
    write_frame_scores(out / "frame_scores.csv", dataset, scores.tolist())
    if plots:
        from train.plots import plot_histograms, plot_roc

        for lvl in ("frame", "video"):
            sel = {n: (per[lvl].scores, per[lvl].labels) for n, per in levels.items()}
            unit = "videos" if lvl == "video" else "crops"
            plot_roc(sel, out / f"roc_{lvl}.png", title=f"ROC ({lvl} level, split {split_name})")
            plot_histograms(
                sel,
                out / f"hist_{lvl}.png",
                threshold,
                title=f"scores ({lvl} level, split {split_name})",
                unit=unit,
                band=band,
            )
    return doc


def run(args: argparse.Namespace) -> int:
    split = None if args.split == ALL else args.split
    doc = evaluate(
        args.checkpoint,
        args.data,
        args.out,
        split,
        args.device,
        args.batch_size,
        args.workers,
        args.backbone_weights,
        plots=not args.no_plots,
    )
    title = f"evaluate {args.checkpoint} on split {doc['split']} (threshold {doc['threshold']:.4f}"
    print_table(doc["metrics"], title + f", uncertain band ±{doc['uncertain_band']:.3f})")
    cov = doc.get("coverage")
    if cov and cov.get("benchmark"):
        why = ", ".join(f"{k} {v}" for k, v in sorted(cov["dropped"].items())) or "none dropped"
        print(f"{cov['benchmark']}: {cov['videos_scored']} of {cov['videos_listed']} listed videos scored ({why})")
    print(f"wrote {args.out / 'metrics.json'}")
    return 0
