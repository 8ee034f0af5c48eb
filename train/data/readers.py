"""Source readers: turn a dataset on disk into a list of media items with labels and video ids.

Three layouts are understood:

* ``ffpp`` — FaceForensics++ c23: ``original_sequences/youtube/c23/videos/*.mp4`` are real,
  ``manipulated_sequences/<Method>/c23/videos/*.mp4`` are fake (``a_b.mp4``: target a, source b).
* ``manifest`` — a CSV (header) or JSONL file of media: ``path,label[,video_id,dataset,split]``; paths are
  relative to the file; label 0/1 or real/fake.
* ``folders`` — ``real/`` and ``fake/`` folders (searched recursively for images and videos).

Every item carries a ``group``: the unit that must never straddle two splits. It is the video id, except
in FF++, where an original and every manipulation made from it (and its paired source) form one group.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from worker.media.suffixes import MEDIA_SUFFIXES

FORMATS = ("ffpp", "manifest", "folders")
_FFPP_PAIR = re.compile(r"^\d+_\d+$")


@dataclass(frozen=True)
class MediaItem:
    path: Path
    label: int  # 0 real, 1 fake
    video_id: str  # unique over the whole source
    dataset: str
    group: str  # split unit (see module docstring)
    split: str | None = None  # preset split (official FF++ split, or a manifest column)
    frame: int | None = None  # a still that is one frame of a video (DeepfakeBench JSON): its frame number


def parse_label(value: object) -> int:
    """0/1, or the words real/fake (any case)."""
    text = str(value).strip().lower()
    if text in ("0", "real", "false"):
        return 0
    if text in ("1", "fake", "true"):
        return 1
    raise ValueError(f"label must be 0/1 or real/fake, got {value!r}")


def media_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


#: The paper's training methods: FF++ without DeepFakeDetection (DFD, a test set) and FaceShifter, as
#: DeepfakeBench's FaceForensics++ set (preprocessing/rearrange.py:216-220 deletes DFD_fake, DFD_real, FF-FH).
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")


def read_ffpp(
    root: str | Path,
    compression: str = "c23",
    split_dir: str | Path | None = None,
    methods: tuple[str, ...] = FFPP_METHODS,
) -> list[MediaItem]:
    """FaceForensics++ videos of `methods` (the paper's four by default). With `split_dir` (holding the
    official train/val/test.json pair lists), every item gets its official split."""
    root = Path(root)
    entries: list[tuple[Path, int, str, str]] = []  # path, label, dataset, stem
    real_dir = root / "original_sequences" / "youtube" / compression / "videos"
    entries += [(p, 0, "FF-real", p.stem) for p in media_files(real_dir)] if real_dir.is_dir() else []
    manip = root / "manipulated_sequences"
    for method in methods:
        vdir = manip / method / compression / "videos"
        if not vdir.is_dir():
            raise FileNotFoundError(f"{vdir}: no such folder (FF++ method {method!r}, {compression})")
        entries += [(p, 1, f"FF-{method}", p.stem) for p in media_files(vdir)]
    if not entries:
        raise FileNotFoundError(f"no FaceForensics++ {compression} videos under {root}")

    groups = _UnionFind()
    for _, _, _, stem in entries:
        if _FFPP_PAIR.match(stem):  # "target_source": one group with both originals
            for part in stem.split("_"):
                groups.union(stem, part)
    official = ffpp_official_splits(split_dir) if split_dir is not None else {}
    items = []
    for path, label, dataset, stem in entries:
        split = None
        if official and (_FFPP_PAIR.match(stem) or stem.isdigit()):
            split = official.get(stem)
            if split is None:
                raise ValueError(f"{path}: video {stem!r} is in none of the official split files")
        items.append(MediaItem(path, label, f"{dataset}/{stem}", dataset, f"ffpp:{groups.find(stem)}", split))
    return items


def ffpp_expected(
    root: str | Path, split_dir: str | Path, compression: str = "c23", methods: tuple[str, ...] = FFPP_METHODS
) -> list[tuple[str, int, Path]]:
    """(video id, label, path) of every video the official pair lists imply: both originals of each pair
    and, per method, both directions ``a_b`` and ``b_a`` (rearrange.py:109-123 maps all four names)."""
    root = Path(root)
    out: list[tuple[str, int, Path]] = []
    for split in ("train", "val", "test"):
        for a, b in json.loads((Path(split_dir) / f"{split}.json").read_text(encoding="utf-8")):
            for v in (str(a), str(b)):
                out.append(
                    (f"FF-real/{v}", 0, root / "original_sequences/youtube" / compression / "videos" / f"{v}.mp4")
                )
            for m in methods:
                for v in (f"{a}_{b}", f"{b}_{a}"):
                    out.append(
                        (f"FF-{m}/{v}", 1, root / "manipulated_sequences" / m / compression / "videos" / f"{v}.mp4")
                    )
    return out


def ffpp_official_splits(split_dir: str | Path) -> dict[str, str]:
    """Map every FF++ video stem (``a``, ``a_b``, ``b_a``) to its split from the official pair lists."""
    mapping: dict[str, str] = {}
    for split in ("train", "val", "test"):
        path = Path(split_dir) / f"{split}.json"
        pairs = json.loads(path.read_text(encoding="utf-8"))
        for a, b in pairs:
            for key in (str(a), str(b), f"{a}_{b}", f"{b}_{a}"):
                if mapping.setdefault(key, split) != split:
                    raise ValueError(f"{key!r} is listed in two official splits")
    return mapping


def _manifest_rows(path: Path) -> Iterable[dict[str, str]]:
    if path.suffix.lower() == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield {k: str(v) for k, v in json.loads(line).items() if v is not None}
    else:
        with path.open(encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh)


def read_media_manifest(path: str | Path) -> list[MediaItem]:
    """A CSV/JSONL list of media. Missing video_id -> the path; missing dataset -> the file's stem."""
    path = Path(path)
    items = []
    for n, row in enumerate(_manifest_rows(path), 2 if path.suffix.lower() != ".jsonl" else 1):
        try:
            media = Path(row["path"])
            label = parse_label(row["label"])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: row {n}: {exc}") from exc
        media = media if media.is_absolute() else path.parent / media
        video_id = row.get("video_id") or row["path"]
        split = row.get("split") or None
        items.append(MediaItem(media, label, video_id, row.get("dataset") or path.stem, video_id, split))
    return items


def read_folders(root: str | Path, dataset: str | None = None) -> list[MediaItem]:
    """``root/real/**`` and ``root/fake/**``; the video id is the path below root without its suffix."""
    root = Path(root)
    name = dataset or root.name
    items = []
    for sub, label in (("real", 0), ("fake", 1)):
        folder = root / sub
        if folder.is_dir():
            for p in media_files(folder):
                vid = p.relative_to(root).with_suffix("").as_posix()
                items.append(MediaItem(p, label, vid, name, vid))
    if not items:
        raise FileNotFoundError(f"no media under {root}/real or {root}/fake")
    return items


def detect_format(source: str | Path) -> str:
    """Guess the layout: a file is a manifest, a folder with original_sequences is FF++, else folders."""
    p = Path(source)
    if p.is_file():
        return "manifest"
    if (p / "original_sequences").is_dir() or (p / "manipulated_sequences").is_dir():
        return "ffpp"
    return "folders"


def read_source(
    source: str | Path,
    fmt: str | None = None,
    ffpp_split_dir: str | Path | None = None,
    ffpp_methods: tuple[str, ...] = FFPP_METHODS,
) -> list[MediaItem]:
    """Dispatch on the format (guessed when None); video ids are checked for uniqueness."""
    fmt = fmt or detect_format(source)
    if fmt == "ffpp":
        items = read_ffpp(source, split_dir=ffpp_split_dir, methods=ffpp_methods)
    elif fmt == "manifest":
        items = read_media_manifest(source)
    elif fmt == "folders":
        items = read_folders(source)
    else:
        raise ValueError(f"unknown source format {fmt!r}; expected one of {FORMATS}")
    check_unique(items)
    return items


def check_unique(items: Iterable[MediaItem]) -> None:
    """Raise if two media files share a video id (stills of one video, `frame` set, may)."""
    seen: dict[str, Path] = {}
    for it in items:
        if it.frame is not None:
            continue
        if it.video_id in seen:
            raise ValueError(f"video id {it.video_id!r} used by both {seen[it.video_id]} and {it.path}")
        seen[it.video_id] = it.path


def with_split(item: MediaItem, split: str) -> MediaItem:
    return replace(item, split=split)
