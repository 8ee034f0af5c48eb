"""Readers for the cross-dataset test sets in their released layouts, and the paper's figures.

Each reader returns a `Listing`: the media items of the dataset's OFFICIAL test list (never a random
split; every item gets ``split="test"``) and the listed videos absent from disk, which are reported, not
skipped. The rules and the lines of the reference code they follow (DeepfakeBench at 8a4a7bf,
``preprocessing/rearrange.py``; GenD at e03532d, ``src/utils/files.py``):

* ``celebdf`` — ``List_of_testing_videos.txt``: ``<label> <folder>/<name>.mp4``, label 1 = real, 0 = fake
  (rearrange.py:321-335 takes the folder from the path and the class from it: ``real`` vs ``synthesis``).
* ``dfd`` — FF++'s DeepFakeDetection: ``manipulated_sequences/DeepFakeDetection/<c>/videos`` fake,
  ``original_sequences/actors/<c>/videos`` real, every video a test video (rearrange.py:93-94, 157-170,
  204-208, 221-229). No list ships with it, so nothing can be reported missing.
* ``dfdc`` — the public test set: ``test/labels.csv`` with columns ``filename,label`` (1 = fake;
  rearrange.py:376-386). Where the videos lie below ``test/`` is not in that code: they are looked up by
  file name anywhere below ``test/`` (unconfirmed).
* ``ffiw`` — FFIW-10K's test split, ``source/test`` real and ``target/test`` fake (GenD files.py:395-411
  names test-real/test-fake lists; the folder names are the release's as far as we know: unconfirmed). A
  file in one folder without a same-named partner in the other is reported (pairing assumed).
* ``deepspeak`` — DeepSpeak v1 ``test/real/**`` real, every other folder below ``test/`` (one per
  generator: facefusion, facefusion_gan, facefusion_live, retalking, wav2lip, GenD files.py:426-436) fake.
  The release layout itself is unconfirmed, and GenD's lists are for DeepSpeak 1.1, not v1.
* ``deepfakebench`` — DeepfakeBench's dataset JSON (``{dataset: {label: {split: [{compression:]
  {video: {label, frames}}}}}``, rearrange.py:7-54; read as abstract_dataset.py:190-207 does; labels per
  train_config.yaml:11-43). Its frames are images; each frame keeps its number as its frame index.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from train.data.readers import FFPP_METHODS, MediaItem, check_unique, ffpp_expected, media_files, read_source

#: Published video AUROC (%) of the full method, trained on FF++ c23 (docs/DESIGN.md section 3).
PAPER_VIDEO_AUROC: dict[str, float] = {
    "celebdf": 96.62,
    "dfd": 98.00,
    "dfdc": 87.15,
    "ffiw": 91.52,
    "deepspeak": 92.01,
}

#: Display names of the benchmark keys.
DISPLAY: dict[str, str] = {
    "celebdf": "Celeb-DF-v2",
    "dfd": "DFD",
    "dfdc": "DFDC",
    "ffiw": "FFIW-10K",
    "deepspeak": "DeepSpeak v1",
    "deepfakebench": "DeepfakeBench JSON",
}

#: DeepfakeBench label names -> 0/1 (training/config/train_config.yaml:11-43 `label_dict`).
DFB_LABELS: dict[str, int] = {
    "DFD_fake": 1, "DFD_real": 0, "FF-SH": 1, "FF-F2F": 1, "FF-DF": 1, "FF-FS": 1, "FF-NT": 1, "FF-FH": 1,
    "FF-real": 0, "CelebDFv1_real": 0, "CelebDFv1_fake": 1, "CelebDFv2_real": 0, "CelebDFv2_fake": 1,
    "DFDCP_Real": 0, "DFDCP_FakeA": 1, "DFDCP_FakeB": 1, "DFDC_Fake": 1, "DFDC_Real": 0,
    "DF_fake": 1, "DF_real": 0, "UADFV_Fake": 1, "UADFV_Real": 0, "roop_Real": 0, "roop_Fake": 1,
}  # fmt: skip
#: DeepfakeBench datasets whose split level is keyed by compression (abstract_dataset.py:193-194).
DFB_COMPRESSED = ("FF-DF", "FF-F2F", "FF-FS", "FF-NT", "FaceForensics++", "DeepFakeDetection", "FaceShifter")


@dataclass(frozen=True)
class Missing:
    """A listed video that is not on disk (or, for FFIW, a file without its assumed partner)."""

    video_id: str
    label: int
    path: str
    reason: str = "not_on_disk"


@dataclass
class Listing:
    """What a reader found: items to score, plus what the official list names but the disk lacks."""

    dataset: str  # benchmark key (celebdf, ...) or the source format
    items: list[MediaItem]
    missing: list[Missing] = field(default_factory=list)
    list_file: str | None = None  # the official list read, when there is one

    @property
    def listed(self) -> int:
        return len(self.items) + len(self.missing)


def _test(item_path: Path, label: int, video_id: str, dataset: str, frame: int | None = None) -> MediaItem:
    return MediaItem(item_path, label, video_id, dataset, video_id, "test", frame)


def read_celebdf(root: str | Path) -> Listing:
    """Celeb-DF-v2 test videos, exactly the lines of ``List_of_testing_videos.txt`` (label 1 = real)."""
    root = Path(root)
    list_file = root / "List_of_testing_videos.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"{list_file}: no such file (Celeb-DF-v2's official test list)")
    items, missing = [], []
    for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise ValueError(f"{list_file}:{n}: expected '<0|1> <folder>/<video>.mp4', got {line!r}")
        label = 1 - int(parts[0])  # the list's 1 means real; ours means fake
        rel = parts[1]
        folder = rel.split("/")[0]
        if ("real" in folder) == bool(label):  # rearrange.py:324-327: the folder names the class too
            raise ValueError(f"{list_file}:{n}: label {parts[0]} contradicts folder {folder!r}")
        vid = f"Celeb-DF-v2/{rel.removesuffix('.mp4')}"
        path = root / rel
        if path.is_file():
            items.append(_test(path, label, vid, "Celeb-DF-v2"))
        else:
            missing.append(Missing(vid, label, str(path)))
    return Listing("celebdf", items, missing, str(list_file))


def read_dfd(root: str | Path, compression: str = "c23") -> Listing:
    """DeepFakeDetection (DFD) inside an FF++ root: actors real, DeepFakeDetection fake; all are test."""
    root = Path(root)
    dirs = (
        (root / "original_sequences" / "actors" / compression / "videos", 0, "DFD_real"),
        (root / "manipulated_sequences" / "DeepFakeDetection" / compression / "videos", 1, "DFD_fake"),
    )
    items = []
    for folder, label, name in dirs:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder (DFD {compression} layout)")
        items += [_test(p, label, f"DFD/{name}/{p.stem}", "DFD") for p in media_files(folder)]
    return Listing("dfd", items)


def read_dfdc(root: str | Path) -> Listing:
    """DFDC public test set: ``test/labels.csv`` (filename,label; 1 = fake); videos found by name under test/."""
    root = Path(root)
    test = root / "test" if (root / "test").is_dir() else root
    list_file = test / "labels.csv"
    if not list_file.is_file():
        raise FileNotFoundError(f"{list_file}: no such file (DFDC's public test labels)")
    on_disk: dict[str, Path] = {}
    for p in media_files(test):
        if on_disk.setdefault(p.name, p) != p:
            raise ValueError(f"two DFDC videos named {p.name}: {on_disk[p.name]} and {p}")
    items, missing = [], []
    with list_file.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{list_file}: expected columns filename,label, got {reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            if row["label"].strip() not in ("0", "1"):
                raise ValueError(f"{list_file}:{n}: label must be 0 or 1, got {row['label']!r}")
            name, label = row["filename"].strip(), int(row["label"])
            vid = f"DFDC/{name.removesuffix('.mp4')}"
            if name in on_disk:
                items.append(_test(on_disk[name], label, vid, "DFDC"))
            else:
                missing.append(Missing(vid, label, str(test / name)))
    return Listing("dfdc", items, missing, str(list_file))


def _find_dir(root: Path, name: str, depth: int = 3) -> Path | None:
    """`root/name`, or the first `*/name` up to `depth` levels down (release archives add a top folder)."""
    for level in range(depth):
        found = sorted(p for p in root.glob("/".join(["*"] * level + [name])) if p.is_dir())
        if found:
            return found[0]
    return None


def read_ffiw(root: str | Path, split: str = "test") -> Listing:
    """FFIW-10K: ``source/<split>`` real, ``target/<split>`` fake; a file without its partner is reported."""
    root = Path(root)
    real_dir, fake_dir = _find_dir(root, f"source/{split}"), _find_dir(root, f"target/{split}")
    if real_dir is None or fake_dir is None:
        raise FileNotFoundError(f"{root}: no source/{split} and target/{split} folders (FFIW-10K layout)")
    real = {p.name: p for p in media_files(real_dir)}
    fake = {p.name: p for p in media_files(fake_dir)}
    items = [_test(p, 0, f"FFIW/source/{p.stem}", "FFIW") for p in real.values()]
    items += [_test(p, 1, f"FFIW/target/{p.stem}", "FFIW") for p in fake.values()]
    missing = [Missing(f"FFIW/target/{Path(n).stem}", 1, str(fake_dir / n), "no_partner") for n in real.keys() - fake]
    missing += [Missing(f"FFIW/source/{Path(n).stem}", 0, str(real_dir / n), "no_partner") for n in fake.keys() - real]
    return Listing("ffiw", items, sorted(missing, key=lambda m: m.video_id))


def read_deepspeak(root: str | Path, split: str = "test") -> Listing:
    """DeepSpeak v1: ``<split>/real/**`` real, ``<split>/<generator>/**`` fake."""
    root = Path(root)
    base = root / split if (root / split).is_dir() else None
    if base is None:
        raise FileNotFoundError(f"{root / split}: no such folder (DeepSpeak v1 layout)")
    items = []
    for folder in sorted(d for d in base.iterdir() if d.is_dir()):
        label = 0 if folder.name.lower() == "real" else 1
        for p in media_files(folder):
            vid = "DeepSpeak/" + p.relative_to(base).with_suffix("").as_posix()
            items.append(_test(p, label, vid, "DeepSpeak"))
    if not any(i.label == 0 for i in items) or not any(i.label == 1 for i in items):
        raise FileNotFoundError(f"{base}: needs a real/ folder and at least one generator folder")
    return Listing("deepspeak", items)


_DIGITS = re.compile(r"\d+")


def read_deepfakebench(
    json_path: str | Path, split: str = "test", compression: str = "c23", root: str | Path | None = None
) -> Listing:
    """Every frame of every video of one DeepfakeBench dataset JSON (`split`), relative frames under `root`."""
    json_path = Path(json_path)
    base = Path(root) if root is not None else json_path.parent
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or len(doc) != 1:
        raise ValueError(f"{json_path}: expected one dataset at the top level, got {list(doc)[:5]}")
    ((name, by_label),) = doc.items()
    items, missing = [], []
    for splits in by_label.values():
        videos = splits.get(split, {})
        if name in DFB_COMPRESSED:
            videos = videos.get(compression, {})
        for video, info in videos.items():
            lname = info["label"]
            if lname not in DFB_LABELS:
                raise ValueError(f"{json_path}: label {lname!r} is not in DeepfakeBench's label_dict")
            label, vid = DFB_LABELS[lname], f"{name}/{lname}_{video}"  # abstract_dataset.py:201 unique name
            frames = [Path(f) if Path(f).is_absolute() else base / f for f in info.get("frames", [])]
            present = [f for f in frames if f.is_file()]
            if not present:
                missing.append(Missing(vid, label, str(frames[0] if frames else video)))
                continue
            for f in sorted(present, key=lambda f: int((_DIGITS.findall(f.stem) or ["0"])[-1])):
                items.append(_test(f, label, vid, name, int((_DIGITS.findall(f.stem) or ["0"])[-1])))
    return Listing("deepfakebench", items, missing, str(json_path))


READERS: dict[str, Callable[[Path], Listing]] = {
    "celebdf": read_celebdf,
    "dfd": read_dfd,
    "dfdc": read_dfdc,
    "ffiw": read_ffiw,
    "deepspeak": read_deepspeak,
    "deepfakebench": read_deepfakebench,
}

#: Every `prepare --format`: the training layouts, then the benchmark test sets.
ALL_FORMATS = ("ffpp", "manifest", "folders", *READERS)


def read_listing(
    source: str | Path,
    fmt: str | None = None,
    ffpp_split_dir: str | Path | None = None,
    ffpp_methods: tuple[str, ...] = FFPP_METHODS,
) -> Listing:
    """The items of `source` in layout `fmt` (guessed for the training layouts), with what is missing.

    FF++ with its official split lists reports every listed video absent from disk."""
    if fmt in READERS:
        listing = READERS[fmt](Path(source))
        check_unique(listing.items)
        return listing
    items = read_source(source, fmt, ffpp_split_dir, ffpp_methods)
    missing: list[Missing] = []
    if ffpp_split_dir is not None and items and items[0].dataset.startswith("FF-"):
        found = {it.video_id for it in items}
        missing = [
            Missing(v, lab, str(p))
            for v, lab, p in ffpp_expected(source, ffpp_split_dir, methods=ffpp_methods)
            if v not in found
        ]
        list_file = str(ffpp_split_dir)
    else:
        list_file = None
    return Listing(fmt or "auto", items, missing, list_file)
