"""The detector of DESIGN.md section 3: CLIP visual tower -> L2-normalised CLS feature -> Linear(D, 2).

The head normally sees the unit-norm feature ("LinearNorm" in the authors' code); GenD's default head
("linear") sees the raw CLS feature instead, so `head_norm` follows the imported release
(yermandy/GenD src/hf/modeling_gend.py:14-18). The `embedding` output is unit-norm either way
(yermandy/GenD src/heads/head.py:38, yermandy/deepfake-detection src/heads/head.py:27).

One module owns the preprocessing (`normalise`) so training, evaluation and the exported ONNX graph
apply exactly the same arithmetic to the same uint8 crops.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: CLIP normalisation (OpenAI), the constants the published weights were trained with.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224


def normalise(faces_uint8_nhwc: Tensor) -> Tensor:
    """uint8 RGB crops N,H,W,3 -> CLIP-normalised float32 N,3,H,W.

    THE preprocessing: `ServingModel` calls it inside the exported graph, so the wire carries uint8.
    """
    if faces_uint8_nhwc.dtype != torch.uint8:
        raise TypeError(f"faces must be uint8, got {faces_uint8_nhwc.dtype}")
    if faces_uint8_nhwc.dim() != 4:
        raise ValueError(f"faces must be N,H,W,3, got {tuple(faces_uint8_nhwc.shape)}")
    x = faces_uint8_nhwc.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def layernorms(module: nn.Module) -> list[tuple[str, nn.LayerNorm]]:
    """Every LayerNorm under `module` (open_clip's LayerNorm/LayerNormFp32 subclass nn.LayerNorm)."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, nn.LayerNorm)]


class DeepfakeDetector(nn.Module):
    """CLIP ViT visual tower (no projection) + linear head on the unit-norm CLS feature."""

    def __init__(
        self,
        visual: nn.Module,
        feature_dim: int,
        arch: str,
        weights: str,
        init_seed: int = 0,
        head_norm: bool = True,
    ):
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(feature_dim, 2, bias=True)
        self.feature_dim = feature_dim
        self.arch = arch
        self.weights = weights
        self.init_seed = init_seed
        self.head_norm = head_norm
        #: The import record (`train.released`) when the weights came from a released detector; its
        #: backbone cannot be rebuilt from `arch` + `weights`, so checkpoints then carry every tensor.
        self.imported: dict[str, Any] | None = None
        self.backbone_sha256: str | None = None  # content hash of the backbone file (train.weights_cache)

    @property
    def weights_sha256(self) -> str:
        """sha256 of the file the weights came from, when known (imports record it)."""
        return str((self.imported or {}).get("sha256", ""))

    def _pooled(self, x: Tensor) -> Tensor:
        pooled = self.visual(x)
        if isinstance(pooled, tuple):  # output_tokens=True towers return (pooled, tokens)
            pooled = pooled[0]
        return pooled

    def features(self, x: Tensor) -> Tensor:
        """CLS token after ln_post, before the projection, L2-normalised (N, D)."""
        return F.normalize(self._pooled(x), dim=-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self._pooled(x)
        feats = F.normalize(pooled, dim=-1)
        return self.head(feats if self.head_norm else pooled), feats

    def fake_prob(self, x: Tensor) -> Tensor:
        logits, _ = self(x)
        return torch.softmax(logits, dim=-1)[:, 1]

    def apply_ln_tuning(self) -> None:
        """Freeze everything except the visual tower's LayerNorms and the head (the paper's LN-tuning)."""
        for p in self.parameters():
            p.requires_grad_(False)
        for _, ln in layernorms(self.visual):
            for p in ln.parameters():
                p.requires_grad_(True)
        for p in self.head.parameters():
            p.requires_grad_(True)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Only the parameters that require grad, detached CPU copies (what a checkpoint needs)."""
        return {n: p.detach().cpu().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Load a (partial) state dict; every key must exist with the same shape (no silent skips)."""
        params = dict(self.named_parameters())
        unknown = sorted(set(sd) - set(params))
        if unknown:
            raise KeyError(f"unexpected keys for {self.arch}: {unknown[:5]} ({len(unknown)} in all)")
        with torch.no_grad():
            for name, value in sd.items():
                target = params[name]
                if target.shape != value.shape:
                    raise ValueError(f"{name}: shape {tuple(value.shape)} != model {tuple(target.shape)}")
                target.copy_(value.to(device=target.device, dtype=target.dtype))


class ServingModel(nn.Module):
    """The exported contract: uint8 faces N,224,224,3 -> (fake_prob (N,), embedding (N, D))."""

    def __init__(self, detector: DeepfakeDetector):
        super().__init__()
        self.detector = detector

    def forward(self, faces: Tensor) -> tuple[Tensor, Tensor]:
        logits, feats = self.detector(normalise(faces))
        return torch.softmax(logits, dim=-1)[:, 1], feats


def _group_of(name: str) -> str:
    """Parameter group of a visual-tower parameter name (LayerNorms are classified by module type)."""
    if name.startswith(("conv1.", "class_embedding", "positional_embedding")):
        return "embeddings"
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    if name == "proj":
        return "projection"
    return "other"


def parameter_breakdown(detector: DeepfakeDetector) -> dict[str, Any]:
    """Counts per group and trainable/frozen split, JSON-able (used by `describe` and reports)."""
    ln_param_names = {
        f"{mod_name}.{p_name}" for mod_name, ln in layernorms(detector.visual) for p_name, _ in ln.named_parameters()
    }
    groups: dict[str, int] = {"layernorm": 0, "attention": 0, "mlp": 0, "embeddings": 0, "head": 0}
    trainable_groups: dict[str, int] = {}
    encoder_total = encoder_trainable = 0
    for name, p in detector.visual.named_parameters():
        group = "layernorm" if name in ln_param_names else _group_of(name)
        groups[group] = groups.get(group, 0) + p.numel()
        encoder_total += p.numel()
        if p.requires_grad:
            encoder_trainable += p.numel()
            trainable_groups[group] = trainable_groups.get(group, 0) + p.numel()
    head_total = sum(p.numel() for p in detector.head.parameters())
    head_trainable = sum(p.numel() for p in detector.head.parameters() if p.requires_grad)
    groups["head"] = head_total
    if head_trainable:
        trainable_groups["head"] = head_trainable
    total = encoder_total + head_total
    trainable = encoder_trainable + head_trainable
    return {
        "arch": detector.arch,
        "weights": detector.weights,
        "feature_dim": detector.feature_dim,
        "total": total,
        "trainable": trainable,
        "frozen": total - trainable,
        "encoder_total": encoder_total,
        "encoder_trainable": encoder_trainable,
        "layernorm_count": len(layernorms(detector.visual)),
        "groups": groups,
        "trainable_groups": trainable_groups,
        "trainable_fraction_of_encoder": encoder_trainable / encoder_total if encoder_total else 0.0,
    }
