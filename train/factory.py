"""Build a `DeepfakeDetector` by architecture name and weights source.

Only open_clip's visual tower is built (no text tower), and its projection is dropped because the
feature is the CLS token before it (DESIGN.md section 3). Random init is seeded so a checkpoint that
stores only LayerNorms + head can rebuild the same frozen backbone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from train import weights_cache
from train.arches import ARCHES, OPENAI, RANDOM_INIT, ArchSpec, arch_spec
from train.model import IMAGE_SIZE, DeepfakeDetector

__all__ = ["ARCHES", "OPENAI", "RANDOM_INIT", "ArchSpec", "arch_spec", "create_model", "file_provenance", "sha256_file"]

log = logging.getLogger(__name__)


def file_provenance(path: str | Path) -> str:
    """`sha256:<first 16 hex>` of a weights file: short, stable, and enough to tell files apart."""
    return f"sha256:{sha256_file(path)[:16]}"


sha256_file = weights_cache.sha256_file


def build_visual(spec: ArchSpec) -> nn.Module:
    """open_clip VisionTransformer for `spec`, without the projection (unused by the method)."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    cfg = spec.resolved_vision_cfg()
    if cfg.get("image_size", IMAGE_SIZE) != IMAGE_SIZE:
        raise ValueError(f"{spec.name}: image_size {cfg['image_size']} != serving contract {IMAGE_SIZE}")
    visual = _build_vision_tower(embed_dim=1, vision_cfg=CLIPVisionCfg(**cfg), quick_gelu=spec.quick_gelu)
    visual.proj = None  # drop the projection: the feature is the CLS token after ln_post
    return visual


def _raw_state_dict(path: Path) -> dict[str, Tensor]:
    """Load an open_clip/OpenAI checkpoint (state dict, {'state_dict': ...}, safetensors, or JIT archive)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # OpenAI's original .pt files are TorchScript archives
        obj = torch.jit.load(str(path), map_location="cpu").state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return dict(obj)


def visual_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys of the visual tower without prefixes ('module.', 'visual.'), projection dropped, fp32."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith("visual.") for k in sd):
        sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    return {k: v.float() for k, v in sd.items() if k != "proj"}


def load_visual_weights(visual: nn.Module, path: Path) -> None:
    sd = visual_state_dict(_raw_state_dict(path))
    try:
        result = visual.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path} does not match the visual tower: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not match the visual tower: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def _openai_weights_file(spec: ArchSpec) -> Path:
    """Download (or find in the cache) the OpenAI weights through open_clip's pretrained registry."""
    from open_clip import pretrained

    if spec.open_clip_name is None:
        raise ValueError(f"arch {spec.name!r} has no OpenAI weights")
    cfg = pretrained.get_pretrained_cfg(spec.open_clip_name, OPENAI)
    if not cfg:
        raise ValueError(f"open_clip lists no OpenAI weights for {spec.open_clip_name}")
    try:
        target = pretrained.download_pretrained(cfg)
    except Exception as e:
        raise RuntimeError(
            f"could not fetch the OpenAI weights for {spec.name} ({type(e).__name__}: {e}). "
            "This needs network access to the Hugging Face hub; offline, download the open_clip weights "
            "elsewhere and pass the file path as weights instead of 'openai'."
        ) from e
    if not target:
        raise RuntimeError(f"open_clip returned no file for {spec.open_clip_name}/openai")
    return Path(target)


def create_model(
    arch: str,
    weights: str = RANDOM_INIT,
    device: str = "cpu",
    *,
    seed: int = 0,
    ln_tuning: bool = True,
    head_norm: bool = True,
    known_sha256: str | None = None,
) -> DeepfakeDetector:
    """The deepfake model (CLIP tower + head) for `arch`, weights `random-init`, `openai` or a weights file.

    Init is seeded (tower and head) without touching the global RNG. LN-tuning is applied by default
    because it is the method; pass `ln_tuning=False` to leave everything trainable. `head_norm=False`
    feeds the raw CLS feature to the head (GenD's "linear" head; see `train.model`). The backbone file is
    stored in `train.weights_cache` and its hash kept in `detector.backbone_sha256`; `known_sha256` (a
    file already read from the cache) spares hashing it again.
    """
    spec = arch_spec(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        visual = build_visual(spec)
        ln_post = visual.ln_post
        assert isinstance(ln_post, nn.LayerNorm)
        feature_dim = int(ln_post.normalized_shape[0])
        backbone_sha256: str | None = None
        if weights == RANDOM_INIT:
            provenance = RANDOM_INIT
        elif weights == OPENAI:  # fetched once, then read from the content-addressed cache (offline)
            name = f"{spec.open_clip_name}-{OPENAI}"
            file, backbone_sha256 = weights_cache.named(name, lambda: _openai_weights_file(spec))
            load_visual_weights(visual, file)
            provenance = OPENAI
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"weights must be 'random-init', 'openai' or a file, not {weights!r}")
            backbone_sha256 = weights_cache.add(path, known_sha256)
            load_visual_weights(visual, path)
            provenance = f"sha256:{backbone_sha256[:16]}"  # = file_provenance(path)
        detector = DeepfakeDetector(
            visual, feature_dim, arch=arch, weights=provenance, init_seed=seed, head_norm=head_norm
        )
    detector.backbone_sha256 = backbone_sha256
    if ln_tuning:
        detector.apply_ln_tuning()
    return detector.to(device)
