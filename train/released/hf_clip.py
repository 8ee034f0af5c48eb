"""Hugging Face `CLIPVisionModel` tensors <-> dfmod's open_clip visual tower, by name.

Both released backbones are HF CLIP vision towers (yermandy/deepfake-detection src/encoders/clip_encoder.py:26-29,
yermandy/GenD src/hf/modeling_gend.py:32-35) whose feature is `pooler_output` = `post_layernorm(CLS token)`
(clip_encoder.py:41-42, modeling_gend.py:47-48): the same CLS-after-ln_post feature as dfmod's tower without
its projection. Every tensor is mapped by its name; q/k/v are separate in HF and fused (q, k, v order, as
`nn.MultiheadAttention.in_proj_weight` expects) in open_clip, concatenated by name, never by position.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from train.factory import ARCHES, arch_spec
from train.model import IMAGE_SIZE

#: HF backbone names the authors train on (yermandy/deepfake-detection src/config.py:36-41,
#: yermandy/GenD src/config.py:55-60) -> dfmod arch. `dfmod/clip-vit-tiny` names dfmod's own test arch.
KNOWN_BACKBONES: dict[str, str] = {
    "openai/clip-vit-large-patch14": "ViT-L-14",
    "openai/clip-vit-base-patch16": "ViT-B-16",
    "openai/clip-vit-base-patch32": "ViT-B-32",
    "dfmod/clip-vit-tiny": "tiny",
}

#: Names without a layer index: HF -> open_clip.
_TOP = {
    "embeddings.class_embedding": "class_embedding",
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}
#: Per-layer names (after `encoder.layers.N.`): HF -> open_clip (after `transformer.resblocks.N.`).
_LAYER = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
}
_QKV = ("q", "k", "v")  # the order of nn.MultiheadAttention's packed projection
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
#: A non-persistent buffer (arange) some exports keep; not a weight.
POSITION_IDS = "embeddings.position_ids"


class MappingError(KeyError):
    """A tensor name this mapping does not know, or a missing one; carries the offending key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key)
        self.key, self.problem = key, problem

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


def layer_count(hf: Mapping[str, Tensor]) -> int:
    indices = {int(m.group(1)) for k in hf if (m := _LAYER_KEY.match(k))}
    if indices != set(range(len(indices))):
        raise MappingError(f"encoder.layers.{sorted(indices)}", "layer indices are not 0..N-1")
    return len(indices)


def to_open_clip(hf: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """open_clip visual state dict (fp32) from HF `vision_model.` names (prefix already removed).

    Raises MappingError naming the first unknown or missing key.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in hf.items():
        if key == POSITION_IDS:
            continue
        if key in _TOP:
            out[_TOP[key]] = value
            continue
        m = _LAYER_KEY.match(key)
        if m is None:
            raise MappingError(key, "not a CLIP vision tower tensor")
        n, rest = int(m.group(1)), m.group(2)
        if rest in _LAYER:
            out[f"transformer.resblocks.{n}.{_LAYER[rest]}"] = value
            continue
        qm = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if qm is None:
            raise MappingError(key, "not a CLIP vision tower tensor")
        qkv.setdefault((n, qm.group(2)), {})[qm.group(1)] = value
    for (n, kind), parts in sorted(qkv.items()):
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise MappingError(f"encoder.layers.{n}.self_attn.{missing[0]}_proj.{kind}", "missing")
        out[f"transformer.resblocks.{n}.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    if "positional_embedding" not in out:
        raise MappingError("embeddings.position_embedding.weight", "missing")
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


@dataclass(frozen=True)
class TowerShape:
    """What the tensors say about the tower (the truth the declared backbone name is checked against)."""

    width: int
    layers: int
    patch_size: int
    image_size: int
    mlp_width: int


def tower_shape(hf: Mapping[str, Tensor]) -> TowerShape:
    try:
        width = int(hf["embeddings.class_embedding"].shape[0])
        patch = int(hf["embeddings.patch_embedding.weight"].shape[-1])
        positions = int(hf["embeddings.position_embedding.weight"].shape[0])
        mlp = int(hf["encoder.layers.0.mlp.fc1.weight"].shape[0])
    except KeyError as e:
        raise MappingError(str(e.args[0]), "missing") from None
    side = math.isqrt(positions - 1)
    if side * side != positions - 1:
        raise MappingError("embeddings.position_embedding.weight", f"{positions} positions is not 1 + a square")
    return TowerShape(width, layer_count(hf), patch, side * patch, mlp)


def _arch_shape(arch: str) -> TowerShape:
    cfg = arch_spec(arch).resolved_vision_cfg()
    width, patch = int(cfg["width"]), int(cfg["patch_size"])
    return TowerShape(
        width,
        int(cfg["layers"]),
        patch,
        int(cfg.get("image_size", IMAGE_SIZE)),
        int(width * float(cfg.get("mlp_ratio", 4.0))),
    )


def arch_for(shape: TowerShape) -> str | None:
    """The dfmod arch whose tower has exactly this shape, if any."""
    return next((a for a in ARCHES if _arch_shape(a) == shape), None)


def hf_vision_config(arch: str) -> dict[str, Any]:
    """`CLIPVisionConfig` kwargs of a dfmod arch: OpenAI CLIP uses QuickGELU and LayerNorm eps 1e-5."""
    cfg = arch_spec(arch).resolved_vision_cfg()
    width = int(cfg["width"])
    return {
        "hidden_size": width,
        "intermediate_size": int(width * float(cfg.get("mlp_ratio", 4.0))),
        "num_hidden_layers": int(cfg["layers"]),
        "num_attention_heads": width // int(cfg.get("head_width", 64)),
        "patch_size": int(cfg["patch_size"]),
        "image_size": int(cfg.get("image_size", IMAGE_SIZE)),
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
