"""A content-addressed cache of backbone weights files, so a checkpoint's backbone is fetched once.

A dfmod checkpoint holds only the LayerNorms and the head; the frozen backbone is rebuilt from its weights
file every time a checkpoint is loaded (evaluate, calibrate, export, benchmark). Without a cache that meant
a hub download per command for ``--weights openai`` and a mandatory ``--backbone-weights`` for
``--weights PATH``. Here every backbone file a model is built from is stored once under its sha256:

    $DFMOD_WEIGHTS_CACHE (default ~/.cache/dfmod/weights)/
        sha256/<hex>                  the file itself (read-only copy)
        names/<open_clip name>-openai  the sha256 of the OpenAI weights fetched for that architecture

and checkpoints record ``backbone_sha256``, so loading one needs neither the network nor the original
file once the cache holds it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

ENV = "DFMOD_WEIGHTS_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "dfmod" / "weights")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lookup(sha256: str | None) -> Path | None:
    """The cached file with this content hash, or None."""
    if not sha256:
        return None
    path = cache_dir() / "sha256" / sha256
    return path if path.is_file() else None


def add(path: str | Path, sha256: str | None = None) -> str:
    """Store `path` under its sha256 (a no-op when already cached); return the hash."""
    digest = sha256 or sha256_file(path)
    if lookup(digest) is None:
        target = cache_dir() / "sha256" / digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{digest[:12]}.", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            if sha256_file(tmp) != digest:  # the source changed while it was copied
                raise ValueError(f"{path} changed while it was being cached")
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return digest


def named(name: str, fetch: Callable[[], Path]) -> tuple[Path, str]:
    """(file, sha256) of the weights known by `name`: from the cache, else `fetch()`ed once and stored."""
    index = cache_dir() / "names" / name
    if index.is_file():
        digest = index.read_text(encoding="utf-8").strip()
        cached = lookup(digest)
        if cached is not None:
            return cached, digest
    digest = add(fetch())
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(digest + "\n", encoding="utf-8")
    cached = lookup(digest)
    assert cached is not None
    return cached, digest
