"""`dfmod scan`: the same pipeline in-process, with ONNX Runtime instead of Triton and no servers at all.

Output for people (a one-line-per-file table) and scripts (`--json`, and the exit codes of `ScanExit`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from enum import IntEnum
from pathlib import Path

from worker.core.contracts import MediaData, ModelInfo, Verdict, VerdictData
from worker.core.settings import WorkerSettings
from worker.infer.onnx_local import OnnxBackend
from worker.media.suffixes import MEDIA_SUFFIXES
from worker.scoring.engine import Engine

COLUMNS = ("file", "status", "label", "score", "faces", "ms")


class ScanExit(IntEnum):
    """`dfmod scan` exit codes; a fake anywhere wins, so `[ $? -eq 1 ]` always means "something was flagged"."""

    CLEAN = 0          # every file real, uncertain or without a face
    FAKE = 1           # at least one file labelled fake
    USAGE = 2          # a path is missing or unreadable, or a file was unusable (status rejected)
    INFRASTRUCTURE = 3  # the model or detector cannot be loaded, or a file failed on our side (status error)


class UsageError(Exception):
    """A path the user gave cannot be scanned (exit 2)."""


def collect_paths(paths: Iterable[Path]) -> list[Path]:
    """The files to scan, in order: files as given, directories walked (sorted, media suffixes, no dot-files).

    Every path is checked before anything is scanned, so a typo fails in a second, not after a long run.
    """
    files: list[Path] = []
    for given in paths:
        if not given.exists():
            raise UsageError(f"no such file or directory: {given}")
        if given.is_dir():
            found = sorted(
                p for p in given.rglob("*")
                if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(given).parts)
            )
            if not found:
                raise UsageError(f"no media files under {given} (looked for {', '.join(sorted(MEDIA_SUFFIXES))})")
            files += found
        elif given.is_file():
            files.append(given)
        else:
            raise UsageError(f"not a regular file: {given}")
    for path in files:
        if not os.access(path, os.R_OK):
            raise UsageError(f"cannot read {path}: permission denied")
    return files


def exit_code(verdicts: Iterable[Verdict]) -> ScanExit:
    statuses, labels = set(), set()
    for verdict in verdicts:
        statuses.add(verdict.data.status)
        labels.add(verdict.data.label)
    if "fake" in labels:
        return ScanExit.FAKE
    if "error" in statuses:
        return ScanExit.INFRASTRUCTURE
    if "rejected" in statuses:
        return ScanExit.USAGE
    return ScanExit.CLEAN


def random_init_warning(model: ModelInfo) -> str | None:
    """The banner for a model whose labels mean nothing."""
    if model.weights != "random-init":
        return None
    return (f"warning: model {model.name}/{model.version} has random-init weights: its scores and labels mean "
            "nothing (export a trained checkpoint with `dfmod-train export --checkpoint ...`)")


def table_header() -> str:
    return _row(COLUMNS)


def table_row(verdict: Verdict, shown_as: str, ms: float) -> str:
    """One file: its name as given, status (with the error code), label, media score, faces, ms in its stages."""
    data = verdict.data
    code = data.error.code.value if data.error else None
    return _row((
        shown_as,
        data.status if code is None else f"{data.status}:{code}",
        data.label or "-",
        "-" if data.score is None else f"{data.score:.3f}",
        str(data.faces_count),
        f"{ms:.0f}",
    ))


def _row(cells: tuple[str, ...]) -> str:
    file, status, label, score, faces, ms = cells
    return f"{file:<40} {status:<26} {label:<9} {score:>6} {faces:>5} {ms:>7}"


def scan(paths: list[Path], model_dir: Path, settings: WorkerSettings) -> Iterator[Verdict]:
    """One verdict per file, in order. Files are read through the file:// fetcher (same limits as the worker)."""
    resolved = [p.resolve() for p in paths]
    fetch = settings.fetch.model_copy(
        update={"allow_schemes": ["file"], "file_roots": sorted({p.parent for p in resolved})}
    )
    settings = settings.model_copy(update={"fetch": fetch})
    window = scan_window(settings)
    with Engine(settings, OnnxBackend(model_dir), use_cache=False, on_batch=None) as engine:
        ahead: deque[tuple[Path, Future[VerdictData]]] = deque()
        queue = iter(resolved)
        for path in queue:  # keep `window` files in the pipeline, so the batcher fills its batches
            ahead.append((path, engine.pipeline.submit(MediaData(uri=path.as_uri()))))
            if len(ahead) >= window:
                break
        while ahead:
            path, future = ahead.popleft()
            data = future.result()
            nxt = next(queue, None)
            if nxt is not None:
                ahead.append((nxt, engine.pipeline.submit(MediaData(uri=nxt.as_uri()))))
            yield Verdict(id=str(path), source="dfmod-scan", subject=data.media_sha256, data=data)


def scan_window(settings: WorkerSettings) -> int:
    """Files in the pipeline at once: enough for every media thread and a full batch of one-face photos."""
    return max(1, settings.media_threads + settings.batch.max_size)
