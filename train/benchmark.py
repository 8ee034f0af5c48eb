"""`dfmod-train benchmark`: a model on the prepared cross-dataset test sets, against the paper's figures.

The model is a dfmod checkpoint (trained or imported) or an exported Triton repository (scored with the
worker's own ONNX Runtime backend, `worker.infer.onnx_local`, so the exported file is what is measured).
The crops are the ones `prepare` wrote with the worker's face pipeline; video score = the worker's
`media_score` (max over a frame's faces, mean over frames). A video that the official list names but that
gave no score is counted as dropped, with its reason (not on disk, no face, unreadable), never hidden.

Scores are cached per crop in ``<prepared>/scores/<model sha256[:16]>-<preprocessing id>.csv``: the crops
themselves are the cache of the preprocessing, so a second model costs only inference.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from train import metrics
from train.commands.benchmark import register as register  # the parser is defined without torch
from train.data.benchmarks import DISPLAY, PAPER_VIDEO_AUROC
from train.data.manifest import CropRecord, crop_path, read_manifest, resolve_manifest
from worker.scoring.aggregate import media_score

SCORES_DIR = "scores"
LISTING_NAME = "listing.json"  # written by `prepare` (train.data.prepare.LISTING_NAME)

CropScorer = Callable[[Path, list[CropRecord]], npt.NDArray[np.float64]]


@dataclass
class Model:
    """What scores crops, and the identity its cached scores are filed under."""

    name: str
    sha256: str
    score: CropScorer
    kind: str  # checkpoint | triton


@dataclass
class DatasetResult:
    key: str  # benchmark key or the prepared folder's name
    name: str
    listed: int
    scored: int
    dropped: dict[str, int] = field(default_factory=dict)
    video_auroc: float = math.nan
    video_ap: float = math.nan
    video_eer: float = math.nan
    frame_auroc: float = math.nan
    paper: float | None = None
    cache: str = ""
    cached: bool = False

    @property
    def delta(self) -> float | None:
        if self.paper is None or math.isnan(self.video_auroc):
            return None
        return 100 * self.video_auroc - self.paper


def _sha256(path: Path) -> str:
    from train.factory import sha256_file

    return sha256_file(path)


def checkpoint_model(path: Path, device: str, batch_size: int, backbone_weights: str | None) -> Model:
    """A dfmod checkpoint, scored with PyTorch exactly as `evaluate` scores it."""
    from train.augment import eval_transform
    from train.checkpoint import load_checkpoint
    from train.data.dataset import CropDataset
    from train.evaluate import resolve_device, score_dataset

    dev = resolve_device(device)
    detector, meta = load_checkpoint(path, device=dev, backbone_weights=backbone_weights)

    def score(manifest: Path, records: list[CropRecord]) -> npt.NDArray[np.float64]:
        ds = CropDataset(manifest, transform=eval_transform)
        ds.records = records
        return score_dataset(detector, ds, dev, batch_size, desc=f"score {manifest.parent.name}")

    return Model(str(path), str(meta["sha256"]), score, "checkpoint")


def _model_dir(path: Path) -> Path:
    """The model folder of a Triton repository: `path` itself, or its only child with a config.pbtxt."""
    if (path / "config.pbtxt").is_file():
        return path
    children = sorted(p for p in path.iterdir() if (p / "config.pbtxt").is_file())
    if len(children) != 1:
        raise ValueError(f"{path}: expected one Triton model folder (with config.pbtxt), found {len(children)}")
    return children[0]


def triton_model(path: Path, batch_size: int) -> Model:
    """An exported Triton repository, scored in-process by the worker's ONNX Runtime backend."""
    import cv2
    from tqdm import tqdm

    from worker.infer.onnx_local import OnnxBackend, latest_version

    model_dir = _model_dir(path)
    onnx_file = model_dir / latest_version(model_dir) / "model.onnx"
    backend = OnnxBackend(model_dir)

    def infer(batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        done: concurrent.futures.Future[npt.NDArray[np.float64]] = concurrent.futures.Future()

        def callback(scores: Any, error: BaseException | None) -> None:
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(np.asarray(scores.fake_prob, dtype=np.float64))

        backend.infer_async(batch, callback)
        return done.result()

    def score(manifest: Path, records: list[CropRecord]) -> npt.NDArray[np.float64]:
        out = np.full(len(records), np.nan)
        starts = range(0, len(records), batch_size)
        for start in tqdm(starts, desc=f"score {manifest.parent.name}", unit="batch", leave=False):
            chunk = records[start : start + batch_size]
            imgs = []
            for rec in chunk:
                bgr = cv2.imread(str(crop_path(manifest, rec)), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise OSError(f"{crop_path(manifest, rec)}: unreadable crop")
                imgs.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            out[start : start + len(chunk)] = infer(np.stack(imgs))
        return out

    return Model(str(model_dir), _sha256(onnx_file), score, "triton")


def load_model(path: Path, device: str = "auto", batch_size: int = 64, backbone_weights: str | None = None) -> Model:
    if path.is_dir():
        return triton_model(path, batch_size)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint or Triton repository")
    return checkpoint_model(path, device, batch_size, backbone_weights)


def _read_cache(path: Path, records: Sequence[CropRecord]) -> npt.NDArray[np.float64] | None:
    """Cached scores when the file lists exactly these crops, in order; else None (rescore)."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if [r["path"] for r in rows] != [r.path for r in records]:
        return None
    return np.array([float(r["score"]) for r in rows], dtype=np.float64)


def _write_cache(path: Path, records: Sequence[CropRecord], scores: npt.NDArray[np.float64]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "video_id", "frame_index", "label", "score"])
        for rec, s in zip(records, scores.tolist(), strict=True):
            w.writerow([rec.path, rec.video_id, rec.frame_index, rec.label, repr(float(s))])
    tmp.replace(path)


def read_listing(prepared: Path) -> dict[str, Any]:
    path = resolve_manifest(prepared).parent / LISTING_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (prepare this test set again: it writes listing.json)")
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


@dataclass
class Scored:
    """One dataset's per-crop scores and what they aggregate to."""

    result: DatasetResult
    video_scores: npt.NDArray[np.float64]
    video_labels: npt.NDArray[np.int64]
    frame_scores: npt.NDArray[np.float64]
    frame_labels: npt.NDArray[np.int64]


def frame_level(
    records: Sequence[CropRecord], scores: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """One score per (video, frame): the max over its faces, as the worker scores a frame."""
    best: dict[tuple[str, int], float] = {}
    label: dict[tuple[str, int], int] = {}
    for rec, s in zip(records, scores.tolist(), strict=True):
        key = (rec.video_id, rec.frame_index)
        best[key] = max(best.get(key, -math.inf), s)
        label[key] = rec.label
    return np.array(list(best.values())), np.array([label[k] for k in best], dtype=np.int64)


def benchmark_one(prepared: Path, model: Model) -> Scored:
    """Score (or read from the cache) one prepared test set and compute its row of the table."""
    listing = read_listing(prepared)
    manifest = resolve_manifest(prepared)
    records = [r for r in read_manifest(manifest) if r.split == "test"]
    key = listing.get("benchmark") or resolve_manifest(prepared).parent.name
    cache = manifest.parent / SCORES_DIR / f"{model.sha256[:16]}-{listing['preprocessing_id']}.csv"
    scores = _read_cache(cache, records)
    cached = scores is not None
    if scores is None:
        scores = model.score(manifest, records) if records else np.zeros(0)
        _write_cache(cache, records, scores)
    members: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        members.setdefault(rec.video_id, []).append(i)
    v_scores = np.array(
        [media_score([records[i].frame_index for i in idx], scores[idx].tolist())[0] for idx in members.values()]
    )
    v_labels = np.array([records[idx[0]].label for idx in members.values()], dtype=np.int64)
    f_scores, f_labels = frame_level(records, scores)
    dropped: dict[str, int] = {}
    for m in listing.get("missing", []):
        dropped[m.get("reason", "not_on_disk")] = dropped.get(m.get("reason", "not_on_disk"), 0) + 1
    for vid, reason in listing.get("dropped", {}).items():
        if vid not in members:
            dropped[reason] = dropped.get(reason, 0) + 1
    result = DatasetResult(
        key=key,
        name=DISPLAY.get(key, key),
        listed=int(listing["videos_listed"]),
        scored=len(members),
        dropped=dropped,
        paper=PAPER_VIDEO_AUROC.get(key),
        cache=str(cache),
        cached=cached,
    )
    if len(members):
        result.video_auroc = metrics.auroc(v_scores, v_labels)
        result.video_ap = metrics.average_precision(v_scores, v_labels)
        result.video_eer = metrics.eer(v_scores, v_labels)[0]
        result.frame_auroc = metrics.auroc(f_scores, f_labels)
    return Scored(result, v_scores, v_labels, f_scores, f_labels)


def _pct(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def print_table(results: Sequence[DatasetResult], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cols = ("dataset", "videos scored / listed", "dropped", "video AUROC", "AP", "EER", "frame AUROC", "paper", "Δ")
    for col in cols:
        table.add_column(col, justify="left" if col in ("dataset", "dropped") else "right")
    for r in results:
        table.add_row(
            r.name,
            f"{r.scored} / {r.listed}",
            ", ".join(f"{k} {v}" for k, v in sorted(r.dropped.items())) or "—",
            _pct(r.video_auroc),
            _pct(r.video_ap),
            _pct(r.video_eer),
            _pct(r.frame_auroc),
            "—" if r.paper is None else f"{r.paper:.2f}",
            "—" if r.delta is None else f"{r.delta:+.2f}",
        )
    Console(width=160).print(table)


def benchmark(
    model_path: Path,
    prepared: Sequence[Path],
    out: Path,
    device: str = "auto",
    batch_size: int = 64,
    backbone_weights: str | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Score every prepared test set, write benchmark.json (and plots) to `out`, return the document."""
    from tqdm import tqdm

    from train.evaluate import json_safe

    for p in prepared:
        read_listing(p)  # every folder checked before the model is loaded
    model = load_model(model_path, device, batch_size, backbone_weights)
    scored = [benchmark_one(p, model) for p in tqdm(prepared, desc="benchmark", unit="dataset")]
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "model": model.name,
        "model_kind": model.kind,
        "model_sha256": model.sha256,
        "video_score": "worker.scoring.aggregate.media_score: max over a frame's faces, mean over frames",
        "paper": "Yermakov et al. 2025 (arXiv:2503.19683), video AUROC, trained on FF++ c23",
        "datasets": [asdict(s.result) | {"delta": s.result.delta} for s in scored],
    }
    (out / "benchmark.json").write_text(json.dumps(json_safe(doc), indent=2) + "\n", encoding="utf-8")
    if plots:
        from train.plots import plot_histograms, plot_roc

        videos = {s.result.name: (s.video_scores, s.video_labels) for s in scored if s.video_scores.size}
        frames = {s.result.name: (s.frame_scores, s.frame_labels) for s in scored if s.frame_scores.size}
        plot_roc(videos, out / "roc_video.png", title="ROC, video level (mean of frame scores)")
        plot_roc(frames, out / "roc_frame.png", title="ROC, frame level")
        plot_histograms(videos, out / "hist_video.png", 0.5, title="video scores", unit="videos")
    return doc


def run(args: argparse.Namespace) -> int:
    doc = benchmark(
        args.model, args.data, args.out, args.device, args.batch_size, args.backbone_weights, not args.no_plots
    )
    if args.json:
        print(json.dumps(json.loads((args.out / "benchmark.json").read_text(encoding="utf-8")), indent=2))
        return 0
    results = [DatasetResult(**{k: v for k, v in d.items() if k != "delta"}) for d in doc["datasets"]]
    print_table(results, f"benchmark {doc['model']} (sha256 {doc['model_sha256'][:12]})")
    print(f"wrote {args.out / 'benchmark.json'}")
    return 0
