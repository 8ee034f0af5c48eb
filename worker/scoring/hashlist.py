"""Hash lists: PDQ hashes of known fakes (and known reals) an operator loads, with a label and a source.

A list entry is indexed like judged media (`NearDuplicateIndex`, under `<prefix>hl:`, never expiring) and its
label, list and source kept beside it (`<prefix>hl:meta:<entry id>`, JSON). An entry is a still (one hash) or a
video (its frame hashes, matched by vPDQ's rule). The entry id is the sha256 of the list name and the hashes,
so importing a file twice changes nothing.

CSV (`dfmod hashlist import|export`): a header, then one entry per row:

    pdq,label,list,source
    <64 hex digits, or several separated by spaces for a video>,fake,<list>,<where it came from>
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from worker.core.contracts import ListMatch
from worker.core.settings import NearDuplicateSettings
from worker.media.pdq import from_hex
from worker.scoring.cache import VerdictCache
from worker.scoring.neardup import NearDuplicateIndex
from worker.scoring.similar import MediaHashes

ListLabel = Literal["fake", "real"]
COLUMNS = ("pdq", "label", "list", "source")
#: Quality given to imported hashes: lists carry none, and their owners vetted them.
IMPORTED_QUALITY = 100


@dataclass(frozen=True)
class ListEntry:
    list: str
    label: ListLabel
    source: str
    pdq: tuple[str, ...]  # hex, one per frame

    @property
    def id(self) -> str:
        return hashlib.sha256(f"{self.list}\n{' '.join(self.pdq)}".encode()).hexdigest()

    def hashes(self) -> MediaHashes:
        rows = np.frombuffer(b"".join(from_hex(h) for h in self.pdq), np.uint8).reshape(len(self.pdq), 32)
        return MediaHashes(rows, np.full(len(self.pdq), IMPORTED_QUALITY, np.int16))


def read_csv(text: str) -> Iterator[ListEntry]:
    """Entries of a CSV (module docstring); ValueError names the first bad row."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"the header lacks {', '.join(missing)} (want {','.join(COLUMNS)})")
    for line, row in enumerate(reader, start=2):
        label, pdq = (row["label"] or "").strip().lower(), tuple((row["pdq"] or "").split())
        if label not in ("fake", "real"):
            raise ValueError(f"row {line}: label must be fake or real, got {row['label']!r}")
        if not pdq or not (row["list"] or "").strip():
            raise ValueError(f"row {line}: pdq and list are required")
        try:
            for h in pdq:
                from_hex(h)
        except ValueError as exc:
            raise ValueError(f"row {line}: {exc}") from exc
        yield ListEntry(row["list"].strip(), label, (row["source"] or "").strip(),  # type: ignore[arg-type]
                        tuple(h.lower() for h in pdq))


def write_csv(entries: Iterable[ListEntry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in entries:
        writer.writerow([" ".join(e.pdq), e.label, e.list, e.source])
    return out.getvalue()


class HashLists:
    """Import, look up and count list entries in Redis. Look-ups never raise (Redis down: no match)."""

    def __init__(self, cache: VerdictCache, settings: NearDuplicateSettings) -> None:
        self.cache = cache
        self._root = f"{cache.settings.key_prefix}hl:"
        self.index = NearDuplicateIndex(cache, settings, self._root, ttl_s=None)

    def add(self, entry: ListEntry) -> bool:
        """Store one entry; False when Redis failed."""
        meta = json.dumps({"list": entry.list, "label": entry.label, "source": entry.source, "pdq": entry.pdq})
        stored = self.cache.call("hash list SET", lambda redis: redis.set(f"{self._root}meta:{entry.id}", meta))
        return bool(stored) and self.index.add(entry.id, entry.hashes())

    def lookup(self, hashes: MediaHashes) -> ListMatch | None:
        found = self.index.lookup(hashes)
        if found is None:
            return None
        raw = self.cache.call("hash list GET", lambda redis: redis.get(f"{self._root}meta:{found.media_sha256}"))
        if raw is None:
            return None
        meta = json.loads(raw)
        return ListMatch(list=meta["list"], label=meta["label"], source=meta["source"], distance=found.distance)

    def entries(self, only: str | None = None) -> Iterator[ListEntry]:
        """Every stored entry (of list `only`); RuntimeError when Redis cannot be read."""
        def scan(redis: Any) -> list[Any]:
            keys = list(redis.scan_iter(match=f"{self._root}meta:*", count=1000))
            return redis.mget(keys) if keys else []  # type: ignore[no-any-return]

        values = self.cache.call("hash list SCAN", scan)
        if values is None:
            raise RuntimeError(f"cannot read the hash lists from Redis at {self.cache.settings.url}")
        for raw in values:
            if raw is None:
                continue
            meta = json.loads(raw)
            if only is None or meta["list"] == only:
                yield ListEntry(meta["list"], meta["label"], meta["source"], tuple(meta["pdq"]))

    def stats(self) -> Counter[tuple[str, str]]:
        """Entries per (list, label)."""
        return Counter((e.list, e.label) for e in self.entries())
