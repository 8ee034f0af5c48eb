"""`dfmod scan`: the same pipeline in-process, with ONNX Runtime instead of Triton and no servers at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from worker.contracts import MediaData, Verdict
from worker.engine import Engine
from worker.infer.onnx_local import OnnxBackend
from worker.settings import WorkerSettings


def scan(paths: list[Path], model_dir: Path, settings: WorkerSettings) -> Iterator[Verdict]:
    """One verdict per file, in order. Files are read through the file:// fetcher (same limits as the worker)."""
    resolved = [p.resolve() for p in paths]
    fetch = settings.fetch.model_copy(
        update={"allow_schemes": ["file"], "file_roots": sorted({p.parent for p in resolved})}
    )
    settings = settings.model_copy(update={"fetch": fetch})
    with Engine(settings, OnnxBackend(model_dir), use_cache=False, on_batch=None) as engine:
        for path in resolved:
            data = engine.pipeline.process(MediaData(uri=path.as_uri()))
            yield Verdict(id=str(path), source="dfmod-scan", subject=data.media_sha256, data=data)
