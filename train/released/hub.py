"""Fetch a released detector from the Hugging Face hub (or its local cache) by repo id.

`snapshot_download` resolves the revision to a commit and returns `snapshots/<commit>/` of the cache, so the
commit is the recorded revision; with `HF_HUB_OFFLINE=1` it resolves from the cache alone. Only the files a
format needs are fetched (GenD: config.json + model.safetensors; deepfake-detection: model.ckpt, or the
file named with `--file`, e.g. model.torchscript).
"""

from __future__ import annotations

import re
from pathlib import Path

from train.released.errors import ReleaseError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: What a snapshot is fetched for when no file is named: a GenD folder, else the Lightning checkpoint.
DEFAULT_FILES = ["config.json", "model.safetensors", "model.ckpt"]


def fetch(repo_id: str, revision: str | None = None, filename: str | None = None) -> tuple[Path, str]:
    """(snapshot folder, commit) of `repo_id` at `revision` with the files an import needs."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a train dependency
        raise ReleaseError(repo_id, f"hub repo ids need huggingface_hub ({e})") from None
    patterns = [filename, "config.json"] if filename else DEFAULT_FILES
    try:
        folder = Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=patterns))
    except Exception as e:  # the hub's errors (offline, not found, gated) are many classes; one line each
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ReleaseError(repo_id, f"could not fetch from the Hugging Face hub: {type(e).__name__}: {first}") from None
    return folder, folder.name
