"""The crop manifest: one JSON object per line, one line per face crop written by `prepare`.

Row fields: ``path`` (crop file, relative to the manifest's folder unless absolute), ``label`` (0 real,
1 fake), ``video_id`` (unique across the whole manifest; frames of one video share it), ``dataset``
(e.g. ``FF-DF``), ``frame_index`` (index of the frame in the decoded stream) and ``split``
(``train`` | ``val`` | ``test``). JSONL keeps appends cheap and diffs readable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class CropRecord:
    path: str
    label: int
    video_id: str
    dataset: str
    frame_index: int
    split: str

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 (real) or 1 (fake), got {self.label!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")

    @classmethod
    def from_dict(cls, row: dict[str, object]) -> CropRecord:
        return cls(
            path=str(row["path"]),
            label=int(row["label"]),  # type: ignore[call-overload]
            video_id=str(row["video_id"]),
            dataset=str(row.get("dataset", "")),
            frame_index=int(row.get("frame_index", 0)),  # type: ignore[call-overload]
            split=str(row["split"]),
        )


def resolve_manifest(path: str | Path) -> Path:
    """Accept either the manifest file or the folder holding `manifest.jsonl`."""
    p = Path(path)
    return p / MANIFEST_NAME if p.is_dir() else p


def read_manifest(path: str | Path) -> list[CropRecord]:
    """All rows of a manifest; a malformed line raises with its line number."""
    p = resolve_manifest(path)
    rows: list[CropRecord] = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(CropRecord.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{p}:{lineno}: bad manifest row: {exc}") from exc
    return rows


def write_manifest(path: str | Path, records: Iterable[CropRecord]) -> Path:
    """Write (replace) a manifest atomically: a reader never sees half a file."""
    p = resolve_manifest(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(asdict(rec), sort_keys=True) + "\n")
    tmp.replace(p)
    return p


def crop_path(manifest_path: str | Path, record: CropRecord) -> Path:
    """Absolute location of a record's crop file."""
    p = Path(record.path)
    return p if p.is_absolute() else resolve_manifest(manifest_path).parent / p
