"""Checkpoints that hold only what LN-tuning trains (LayerNorms + head), plus what rebuilds the rest.

A ViT-L/14 checkpoint is ~0.4 MB instead of 1.2 GB: the frozen backbone is rebuilt from `arch`, the
weights provenance and, for `random-init`, the init seed.

An imported released detector (`train.released`) cannot be rebuilt that way (its backbone is not the
OpenAI one), so its checkpoint carries every tensor (`state_dict_scope: "full"`) and the import record
`payload["imported"] = {"format", "source", "revision", "sha256", "hyper_parameters"}`. Both survive
`calibrate` and fine-tuning, which save the detector again: the scope follows `detector.imported`.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from train import weights_cache
from train.factory import OPENAI, RANDOM_INIT, create_model, file_provenance, sha256_file
from train.model import DeepfakeDetector
from worker.core.version import PREPROCESSING_VERSION

FORMAT = "dfmod-ln-tuning/1"
SCOPE_TRAINABLE = "trainable"  # LayerNorms + head; the backbone is rebuilt (absent key = this, as before)
SCOPE_FULL = "full"  # every tensor of the detector: imported weights that nothing could rebuild


def save_checkpoint(
    path: str | Path, detector: DeepfakeDetector, config: dict[str, Any], extra: dict[str, Any] | None = None
) -> str:
    """Write the trainable params + provenance + config + extra atomically; return the file's sha256.

    Conventional `extra` keys read by export: `threshold` (float), `uncertain_band` (float).
    """
    path = Path(path)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "arch": detector.arch,
        "weights": detector.weights,
        "backbone_sha256": detector.backbone_sha256,  # the backbone file in train.weights_cache
        "init_seed": detector.init_seed,
        "feature_dim": detector.feature_dim,
        "preprocessing_version": PREPROCESSING_VERSION,
        "torch_version": str(torch.__version__),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "head_norm": bool(detector.head_norm),
        "config": _plain(config),
        "extra": _plain(extra or {}),
        "state_dict_scope": SCOPE_FULL if detector.imported is not None else SCOPE_TRAINABLE,
        "state_dict": (
            _full_state_dict(detector) if detector.imported is not None else detector.trainable_state_dict()
        ),
    }
    if detector.imported is not None:
        payload["imported"] = _plain(detector.imported)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_file(path)


def _full_state_dict(detector: DeepfakeDetector) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in detector.state_dict().items()}  # torch.save copies; no clone needed


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-round-tripped copy (Paths, enums -> str) so `weights_only` loading accepts it."""
    out: dict[str, Any] = json.loads(json.dumps(d, default=str))
    return out


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw payload (tensors on CPU); `weights_only` load, so a checkpoint cannot run code."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise ValueError(f"{path}: empty file, not a checkpoint")
    try:
        payload: Any = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise FileNotFoundError(f"{path}: no such checkpoint") from exc
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt: {reason})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    return payload


def _backbone_source(stored: str, override: str | None, sha256: str | None = None) -> tuple[str, str]:
    """(what to build from, provenance to record); refuses a backbone file that is not the trained one.

    Without an override the backbone comes from the weights cache when it holds the recorded hash, so an
    `openai` checkpoint loads offline and a file-trained one needs no --backbone-weights."""
    if override is None:
        if stored == RANDOM_INIT:
            return stored, stored
        cached = weights_cache.lookup(sha256)
        if cached is not None:
            return str(cached), stored
        if stored == OPENAI:
            return stored, stored
        raise ValueError(
            f"checkpoint was trained on backbone file {stored}, which is not in the weights cache "
            f"({weights_cache.cache_dir()}, ${weights_cache.ENV}); pass backbone_weights=<that file>"
        )
    if override in (RANDOM_INIT, OPENAI):
        if override != stored:
            raise ValueError(f"checkpoint was trained on {stored}, not {override}")
        return override, stored
    actual = file_provenance(override)
    if stored == OPENAI:
        return override, OPENAI  # a local copy of the OpenAI weights: no published hash to check against
    if actual != stored:
        raise ValueError(f"backbone file {override} is {actual}, checkpoint was trained on {stored}")
    return override, stored


def load_checkpoint(
    path: str | Path, device: str = "cpu", backbone_weights: str | None = None
) -> tuple[DeepfakeDetector, dict[str, Any]]:
    """Rebuild the detector (in eval mode; call .train() to resume) with its metadata (config, extra, sha256).

    The backbone comes from `train.weights_cache` when it holds the checkpoint's `backbone_sha256`;
    otherwise `backbone_weights` points at the backbone file when the provenance is a file hash, or at a
    local copy of the OpenAI weights when offline.
    """
    payload = read_checkpoint(path)
    head_norm = bool(payload.get("head_norm", True))
    if payload.get("state_dict_scope", SCOPE_TRAINABLE) == SCOPE_FULL:
        detector = _full_detector(payload, head_norm)
    else:
        sha = payload.get("backbone_sha256")
        source, provenance = _backbone_source(payload["weights"], backbone_weights, sha)
        from_cache = weights_cache.lookup(sha) is not None and source == str(weights_cache.lookup(sha))
        detector = create_model(
            payload["arch"],
            source,
            device="cpu",
            seed=int(payload["init_seed"]),
            head_norm=head_norm,
            known_sha256=sha if from_cache else None,
        )
        detector.weights = provenance
        detector.load_trainable_state_dict(payload["state_dict"])
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["sha256"] = sha256_file(path)
    meta["path"] = str(path)
    return detector.to(device).eval(), meta


def _full_detector(payload: dict[str, Any], head_norm: bool) -> DeepfakeDetector:
    """The detector of a full-scope checkpoint: the architecture, then every tensor (strict by name)."""
    detector = create_model(payload["arch"], RANDOM_INIT, device="cpu", seed=0, head_norm=head_norm)
    result = detector.load_state_dict(payload["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint does not match {payload['arch']}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    detector.weights = str(payload["weights"])
    detector.imported = dict(payload["imported"]) if payload.get("imported") else {}
    return detector
