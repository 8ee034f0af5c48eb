"""Backbone weights are fetched once, stored by content hash, and found again offline by checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train import weights_cache
from train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from train.factory import create_model


def test_named_weights_are_fetched_once_then_read_from_the_cache(tmp_path: Path, weights_cache_dir: Path) -> None:
    calls = []

    def fetch() -> Path:
        calls.append(1)
        src = tmp_path / f"download-{len(calls)}.bin"
        src.write_bytes(b"weights")
        return src

    first, sha = weights_cache.named("ViT-X-openai", fetch)
    second, sha2 = weights_cache.named("ViT-X-openai", fetch)
    assert len(calls) == 1 and first == second and sha == sha2 == weights_cache.sha256_file(first)
    assert first == weights_cache_dir / "sha256" / sha and first.read_bytes() == b"weights"
    assert weights_cache.lookup("0" * 64) is None


def test_a_file_trained_checkpoint_loads_from_the_cache_without_the_file(tmp_path: Path) -> None:
    backbone = tmp_path / "backbone.pt"
    torch.save(create_model("tiny", seed=7).visual.state_dict(), backbone)
    detector = create_model("tiny", str(backbone), seed=1)
    sha = weights_cache.sha256_file(backbone)
    assert detector.backbone_sha256 == sha and detector.weights == f"sha256:{sha[:16]}"
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, detector, {"arch": "tiny"})
    assert read_checkpoint(ck)["backbone_sha256"] == sha
    backbone.unlink()  # gone: the cache has it
    loaded, meta = load_checkpoint(ck)
    assert loaded.weights == detector.weights and meta["backbone_sha256"] == sha
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x)[0], detector.eval()(x)[0])


def test_without_the_cached_file_the_error_names_the_cache(tmp_path: Path, weights_cache_dir: Path) -> None:
    backbone = tmp_path / "backbone.pt"
    torch.save(create_model("tiny", seed=7).visual.state_dict(), backbone)
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, create_model("tiny", str(backbone)), {"arch": "tiny"})
    for f in (weights_cache_dir / "sha256").iterdir():
        f.chmod(0o644)
        f.unlink()
    with pytest.raises(ValueError, match="not in the weights cache"):
        load_checkpoint(ck)
    assert load_checkpoint(ck, backbone_weights=str(backbone))[0].weights.startswith("sha256:")
