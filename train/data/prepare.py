"""`dfmod-train prepare`: media -> aligned face crops + crop manifest, with the worker's own face pipeline.

Decoding, detection and alignment are the worker's functions (`decode_media`, `create_detector`,
`extract_faces`), called with the same settings types, so a training crop is byte-for-byte the crop the
worker sends to the model. Crops are PNG (lossless). Media with no face (or that fail to decode) are listed
in ``no_face.jsonl`` and a printed table instead of silently vanishing; videos an official list names but
the disk lacks are listed in ``listing.json`` (with the counts and the ``preprocessing_id``, the hash of
every setting that changes a crop, which keys the benchmark's score cache).

FF++ is split by its official pair lists (``--ffpp-splits``); a random split must be asked for
(``--random-split``), because a random split is not the paper's protocol. The benchmark layouts
(`train.data.benchmarks`) put every listed video in ``test``.

Decision: by default only the largest face of each frame is kept (``--faces-per-frame 1``), because a
fake video's label belongs to its manipulated (main) face; serving scores every face and takes the max.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import platform
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
from tqdm import tqdm

from train.commands.prepare import register as register  # the parser is defined without torch
from train.data.benchmarks import READERS, Listing, read_listing
from train.data.manifest import CropRecord, write_manifest
from train.data.readers import FFPP_METHODS, MediaItem, detect_format
from train.data.splits import assign_splits
from worker.core.errors import MediaError
from worker.core.settings import DecodeSettings, FaceSettings, WorkerSettings
from worker.core.types import FaceCrop, FaceDetector
from worker.core.version import PREPROCESSING_VERSION
from worker.faces.extract import drain, extract_faces
from worker.faces.factory import create_detector
from worker.media.decode import decode_media

NO_FACE_NAME = "no_face.jsonl"
LISTING_NAME = "listing.json"
CROPS_DIR = "crops"


@dataclass(frozen=True)
class PrepareConfig:
    source: Path
    out: Path
    fmt: str | None = None
    frames: int = 32
    detector: str = "yunet"
    weights_dir: Path | None = None
    faces_per_frame: int = 1
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 42
    ffpp_splits: Path | None = None
    workers: int = 0
    ffpp_methods: tuple[str, ...] = FFPP_METHODS
    random_split: bool = False


@dataclass
class MediaResult:
    """What one media item produced: crops written (relative paths, frame indices) or why none."""

    item: MediaItem
    crops: list[tuple[str, int]] = field(default_factory=list)
    frames_sampled: int = 0
    reason: str | None = None


def face_settings(detector: str, weights_dir: Path | None) -> FaceSettings:
    """The worker's face settings (env `DFMOD_FACES__*` honoured) with the CLI's overrides."""
    base = WorkerSettings().faces
    update: dict[str, Any] = {"backend": detector}
    if weights_dir is not None:
        update["weights_dir"] = Path(weights_dir)
    return FaceSettings.model_validate({**base.model_dump(), **update})


def decode_settings(frames: int) -> DecodeSettings:
    base = WorkerSettings().decode
    return DecodeSettings.model_validate({**base.model_dump(), "frames": frames})


def select_faces(faces: Sequence[FaceCrop], per_frame: int) -> list[FaceCrop]:
    """Keep the `per_frame` largest faces of each frame (0 keeps all), in frame order."""
    if per_frame <= 0:
        return list(faces)
    by_frame: dict[int, list[FaceCrop]] = {}
    for f in faces:
        by_frame.setdefault(f.frame_index, []).append(f)
    kept: list[FaceCrop] = []
    for idx in sorted(by_frame):
        ranked = sorted(by_frame[idx], key=lambda f: f.detection.box[2] * f.detection.box[3], reverse=True)
        kept.extend(ranked[:per_frame])
    return kept


def crop_relpath(item: MediaItem, frame_index: int, k: int) -> str:
    """crops/<dataset>/<video id>-<hash>/<frame>_<k>.png; path-hostile characters are replaced, and the
    short hash of the exact video id keeps two ids that sanitise alike (``a/b``, ``a_b``) apart."""
    safe_vid = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.video_id)
    safe_ds = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.dataset)
    tag = hashlib.blake2b(item.video_id.encode(), digest_size=4).hexdigest()
    return f"{CROPS_DIR}/{safe_ds}/{safe_vid}-{tag}/{frame_index:06d}_{k}.png"


def write_png(path: Path, rgb: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"PNG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


class MediaProcessor:
    """Decode + detect + align + write for one media item; one instance (one detector) per process."""

    def __init__(self, out: Path, decode: DecodeSettings, faces: FaceSettings, faces_per_frame: int) -> None:
        self.out = out
        self.decode = decode
        self.faces = faces
        self.faces_per_frame = faces_per_frame
        self.detector: FaceDetector = create_detector(faces)

    def __call__(self, item: MediaItem) -> MediaResult:
        result = MediaResult(item)
        try:
            media = decode_media(item.path.read_bytes(), self.decode)
        except Exception as exc:  # one bad file must not stop a dataset run; it is reported instead
            result.reason = f"decode_failed: {type(exc).__name__}: {exc}"
            return result
        result.frames_sampled = len(media.frames)
        try:  # frames are converted to RGB as the faces stage reads them (worker.core.types.Frame)
            crops = extract_faces(drain(media.frames), self.detector, self.faces)
        except MediaError as exc:
            result.reason = f"decode_failed: {exc.message}"
            return result
        faces = select_faces(crops, self.faces_per_frame)
        if not faces:
            result.reason = "no_face"
            return result
        seen: dict[int, int] = {}
        for face in faces:
            k = seen.get(face.frame_index, 0)
            seen[face.frame_index] = k + 1
            frame = face.frame_index if item.frame is None else item.frame
            rel = crop_relpath(item, frame, k)
            write_png(self.out / rel, face.crop)
            result.crops.append((rel, frame))
        return result


_PROCESSOR: MediaProcessor | None = None


def _init_worker(out: Path, decode: DecodeSettings, faces: FaceSettings, per_frame: int) -> None:
    global _PROCESSOR
    cv2.setNumThreads(1)  # processes already give the parallelism
    _PROCESSOR = MediaProcessor(out, decode, faces, per_frame)


def _run_one(item: MediaItem) -> MediaResult:
    assert _PROCESSOR is not None
    return _PROCESSOR(item)


def _results(cfg: PrepareConfig, items: list[MediaItem]) -> Iterator[MediaResult]:
    dec, fac = decode_settings(cfg.frames), face_settings(cfg.detector, cfg.weights_dir)
    if cfg.workers <= 0:
        proc = MediaProcessor(cfg.out, dec, fac, cfg.faces_per_frame)
        yield from map(proc, items)
        return
    # spawn, not fork: forking a process that already runs OpenMP/FFmpeg threads (torch, PyAV) can deadlock
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        cfg.workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(cfg.out, dec, fac, cfg.faces_per_frame),
    ) as pool:
        yield from pool.map(_run_one, items, chunksize=1)


def crop_records(result: MediaResult) -> list[CropRecord]:
    """Manifest rows of one processed media item: every crop inherits its item's split."""
    it = result.item
    if it.split is None:
        raise ValueError(f"{it.path}: no split assigned")
    return [CropRecord(rel, it.label, it.video_id, it.dataset, frame, it.split) for rel, frame in result.crops]


@dataclass
class PrepareReport:
    manifest: Path
    media: int
    crops: int
    no_face: list[MediaResult]
    per_split: dict[str, int]
    listing: Listing | None = None


def preprocessing_id(cfg: PrepareConfig) -> str:
    """Short hash of every setting that changes a crop: same id, same crops (the score cache's key)."""
    faces = face_settings(cfg.detector, cfg.weights_dir).model_dump(mode="json")
    faces.pop("weights_dir", None)
    doc = {
        "preprocessing_version": PREPROCESSING_VERSION,
        "decode": decode_settings(cfg.frames).model_dump(mode="json"),
        "faces": faces,
        "faces_per_frame": cfg.faces_per_frame,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_items(cfg: PrepareConfig) -> Listing:
    """The source's items with their splits; FF++ without its official lists is refused unless asked."""
    fmt = cfg.fmt or (None if cfg.source.is_file() else detect_format(cfg.source))
    if fmt == "ffpp" and cfg.ffpp_splits is None and not cfg.random_split:
        raise ValueError(
            "FF++ is split by its official lists: pass --ffpp-splits DIR (train.json, val.json, test.json "
            "from github.com/ondyari/FaceForensics dataset/splits), or --random-split for a random video split"
        )
    listing = read_listing(cfg.source, fmt, cfg.ffpp_splits, cfg.ffpp_methods)
    listing.items = assign_splits(listing.items, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    return listing


def prepare(cfg: PrepareConfig) -> PrepareReport:
    """Run the whole preparation; the returned report is what the CLI prints."""
    if not cfg.source.exists():
        raise FileNotFoundError(f"{cfg.source}: no such file or folder")
    listing = read_items(cfg)
    items = listing.items
    if not items:
        raise ValueError(f"{cfg.source}: no media found")
    # Build the face detector once here, so missing detector weights fail before anything is written.
    create_detector(face_settings(cfg.detector, cfg.weights_dir))
    cfg.out.mkdir(parents=True, exist_ok=True)
    records: list[CropRecord] = []
    failed: list[MediaResult] = []
    bar = tqdm(_results(cfg, items), total=len(items), desc="prepare", unit="media")
    for res in bar:
        if res.reason is not None:
            failed.append(res)
        records.extend(crop_records(res))
        bar.set_postfix(crops=len(records), no_face=len(failed))
    manifest = write_manifest(cfg.out, records)
    with (cfg.out / NO_FACE_NAME).open("w", encoding="utf-8") as fh:
        for res in failed:
            row = {
                "path": str(res.item.path),
                "video_id": res.item.video_id,
                "dataset": res.item.dataset,
                "label": res.item.label,
                "frames_sampled": res.frames_sampled,
                "reason": res.reason,
            }
            fh.write(json.dumps(row) + "\n")
    write_listing(cfg, listing, failed, {r.video_id for r in records})
    per_split = {s: sum(1 for r in records if r.split == s) for s in ("train", "val", "test")}
    return PrepareReport(manifest, len(items), len(records), failed, per_split, listing)


def write_listing(cfg: PrepareConfig, listing: Listing, failed: list[MediaResult], scored: set[str]) -> Path:
    """listing.json: what the list named, what was on disk, what was missing, and the preprocessing id."""
    videos = {it.video_id: it.label for it in listing.items}
    dropped: dict[str, str] = {}
    for res in failed:  # a still of a multi-frame video only drops the video if every still failed
        dropped.setdefault(res.item.video_id, str(res.reason).split(":")[0])
    for vid in scored:
        dropped.pop(vid, None)
    doc = {
        "format": listing.dataset,
        "benchmark": listing.dataset if listing.dataset in READERS else None,
        "source": str(cfg.source),
        "list_file": listing.list_file,
        "videos_listed": len(videos) + len(listing.missing),
        "videos_on_disk": len(videos),
        "missing": [vars(m) for m in listing.missing],
        "dropped": dropped,
        "labels": videos,
        "preprocessing_id": preprocessing_id(cfg),
        "preprocessing_version": PREPROCESSING_VERSION,
        "frames": cfg.frames,
        "detector": cfg.detector,
        "faces_per_frame": cfg.faces_per_frame,
        "python": platform.python_version(),
    }
    path = cfg.out / LISTING_NAME
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def print_report(report: PrepareReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title="prepare")
    for col in ("media", "crops", "train", "val", "test", "no face / failed"):
        summary.add_column(col, justify="right")
    summary.add_row(
        str(report.media),
        str(report.crops),
        *(str(report.per_split[s]) for s in ("train", "val", "test")),
        str(len(report.no_face)),
    )
    console.print(summary)
    if report.no_face:
        table = Table(title=f"media without a usable face ({NO_FACE_NAME})")
        for col in ("video_id", "dataset", "frames", "reason"):
            table.add_column(col)
        for res in report.no_face:
            table.add_row(res.item.video_id, res.item.dataset, str(res.frames_sampled), str(res.reason))
        console.print(table)
    if report.listing is not None and report.listing.missing:
        table = Table(title=f"listed but not on disk ({LISTING_NAME})")
        for col in ("video_id", "label", "path", "reason"):
            table.add_column(col)
        for m in report.listing.missing:
            table.add_row(m.video_id, str(m.label), m.path, m.reason)
        console.print(table)
    console.print(f"manifest: {report.manifest}")


def run(args: argparse.Namespace) -> int:
    cfg = PrepareConfig(
        source=args.source,
        out=args.out,
        fmt=args.fmt,
        frames=args.frames,
        detector=args.detector,
        weights_dir=args.weights_dir,
        faces_per_frame=args.faces_per_frame,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        ffpp_splits=args.ffpp_splits,
        workers=args.workers,
        ffpp_methods=tuple(m.strip() for m in args.ffpp_methods.split(",") if m.strip()),
        random_split=args.random_split,
    )
    report = prepare(cfg)
    print_report(report)
    return 0
