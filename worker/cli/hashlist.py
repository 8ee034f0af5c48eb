"""`dfmod hashlist import|export|stats`: operators' lists of known fakes and reals, in Redis beside the cache.

`export` writes the lists' entries, or with `--labelled-fake` the frame hashes of every cached verdict dfmod
labelled fake (for sharing), in the CSV of `worker.scoring.hashlist`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from worker.core.settings import WorkerSettings
from worker.scoring.cache import VerdictCache
from worker.scoring.hashlist import HashLists, ListEntry, read_csv, write_csv

_VERDICT_KEY = re.compile(r"[0-9a-f]{64}:[0-9a-f]{32}$")


class HashListError(Exception):
    """A user-facing failure: the message is the one line printed; `usage`: the input's fault, not Redis's."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def _lists(settings: WorkerSettings) -> HashLists:
    if not settings.cache.enabled:
        raise HashListError("the cache is disabled (DFMOD_CACHE__ENABLED=false): hash lists live in its Redis",
                            usage=True)
    return HashLists(VerdictCache(settings.cache), settings.near_duplicate)


def import_csv(settings: WorkerSettings, text: str, list_name: str | None = None) -> int:
    """Store every entry of `text` (`list_name` overrides the list column); the number stored."""
    try:
        entries = list(read_csv(text))
    except ValueError as exc:
        raise HashListError(str(exc), usage=True) from exc
    lists = _lists(settings)
    for n, entry in enumerate(entries):
        entry = ListEntry(list_name or entry.list, entry.label, entry.source, entry.pdq)
        if not lists.add(entry):
            raise HashListError(f"Redis at {settings.cache.url} refused entry {n + 1} of {len(entries)} "
                                f"({n} stored)")
    return len(entries)


def export_lists(settings: WorkerSettings, list_name: str | None = None) -> str:
    try:
        return write_csv(_lists(settings).entries(list_name))
    except RuntimeError as exc:
        raise HashListError(str(exc)) from exc


def _fake_verdicts(cache: VerdictCache) -> Iterator[dict[str, Any]]:
    prefix = cache.settings.key_prefix

    def scan(redis: Any) -> list[Any]:
        keys = [k for k in redis.scan_iter(match=f"{prefix}*", count=1000)
                if _VERDICT_KEY.match((k.decode() if isinstance(k, bytes) else k)[len(prefix):])]
        return redis.mget(keys) if keys else []  # type: ignore[no-any-return]

    values = cache.call("verdict SCAN", scan)
    if values is None:
        raise HashListError(f"cannot read the verdict cache from Redis at {cache.settings.url}")
    for raw in values:
        try:
            verdict = json.loads(raw) if raw is not None else None
        except ValueError:
            continue
        if isinstance(verdict, dict) and verdict.get("label") == "fake" and verdict.get("phash") \
                and not (verdict.get("near_duplicate") or {}).get("answered"):
            yield verdict


def export_labelled_fake(settings: WorkerSettings, list_name: str) -> str:
    """The hashes of every cached verdict labelled fake (not those answered as a near-duplicate)."""
    cache = VerdictCache(settings.cache)
    entries = []
    for v in _fake_verdicts(cache):
        model = v.get("model") or {}
        source = f"dfmod {model.get('name', '')} {model.get('version', '')} sha256:{v.get('media_sha256', '')}"
        entries.append(ListEntry(list_name, "fake", source.strip(), tuple(f["pdq"] for f in v["phash"])))
    return write_csv(entries)


def stats(settings: WorkerSettings) -> list[dict[str, Any]]:
    try:
        counts = _lists(settings).stats()
    except RuntimeError as exc:
        raise HashListError(str(exc)) from exc
    return [{"list": name, "label": label, "entries": n} for (name, label), n in sorted(counts.items())]
