"""A `Release` -> dfmod `DeepfakeDetector`: arch from the tensors, every tensor by name, then a parity check.

The check runs the release's own forward on probe crops and compares p(fake): the traced graph itself for
TorchScript (which also decides its head's normalisation, since no hyper-parameters travel with it), and
the HF `CLIPVisionModel` forward the authors' code runs (`vision_model(x).pooler_output` -> head) for the
others. An import that does not reproduce its reference is refused, not written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from train.factory import RANDOM_INIT, create_model
from train.model import IMAGE_SIZE, DeepfakeDetector, normalise
from train.released.errors import ReleaseError
from train.released.formats import TORCHSCRIPT, Release
from train.released.hf_clip import (
    KNOWN_BACKBONES,
    POSITION_IDS,
    MappingError,
    arch_for,
    hf_vision_config,
    to_open_clip,
    tower_shape,
)

log = logging.getLogger(__name__)

#: p(fake) agreement required between the import and its reference forward (fp32).
TOLERANCE = 1e-4
#: The same for a reference traced in bf16 (the authors' torchscript may be, inference_torchscript.py:7).
BF16_TOLERANCE = 2e-2
PROBE_FACES = 4


@dataclass
class BuildReport:
    arch: str
    head_norm: bool
    reference: str  # what p(fake) was compared with
    max_abs_diff: float


def provenance_label(release: Release) -> str:
    """The `weights` provenance of an import: `repo@commit` from the hub, else the file/folder name."""
    return f"{release.source}@{release.revision}" if release.revision else release.source


def build_detector(release: Release, tolerance: float = TOLERANCE) -> tuple[DeepfakeDetector, BuildReport]:
    """The detector the release describes, checked against the release's own forward."""
    try:
        shape = tower_shape(release.backbone)
        visual_sd = to_open_clip(release.backbone)
    except MappingError as e:
        raise ReleaseError(release.file, e.problem, e.key) from None
    arch = arch_for(shape)
    if arch is None:
        raise ReleaseError(
            release.file,
            f"no dfmod arch has this CLIP tower (width {shape.width}, {shape.layers} layers, "
            f"patch {shape.patch_size}, image {shape.image_size}, mlp {shape.mlp_width})",
        )
    if release.backbone_name is not None and KNOWN_BACKBONES.get(release.backbone_name) != arch:
        raise ReleaseError(
            release.file, f"the tensors are a {arch} tower but the release declares backbone {release.backbone_name!r}"
        )
    detector = create_model(arch, RANDOM_INIT, head_norm=bool(release.head_norm))
    _load_visual(release, detector, visual_sd)
    with torch.no_grad():
        detector.head.weight.copy_(release.head_weight)
        detector.head.bias.copy_(release.head_bias)
    detector.eval()
    detector.weights = provenance_label(release)
    report = _verify(release, detector, tolerance)
    detector.head_norm = report.head_norm
    release.head_norm = report.head_norm
    detector.imported = release.record()
    return detector, report


def _load_visual(release: Release, detector: DeepfakeDetector, sd: dict[str, Tensor]) -> None:
    target = detector.visual.state_dict()
    for key, value in target.items():
        if key not in sd:
            raise ReleaseError(release.file, f"missing for the {detector.arch} tower", key)
        if tuple(sd[key].shape) != tuple(value.shape):
            raise ReleaseError(
                release.file, f"shape {tuple(sd[key].shape)} != {tuple(value.shape)} of the {detector.arch} tower", key
            )
    extra = sorted(set(sd) - set(target))
    if extra:
        raise ReleaseError(release.file, f"not part of the {detector.arch} tower", extra[0])
    detector.visual.load_state_dict(sd, strict=True)


def probe_faces(n: int = PROBE_FACES, seed: int = 0) -> Tensor:
    """CLIP-normalised probe crops N,3,224,224 (random uint8 through dfmod's own preprocessing)."""
    gen = torch.Generator().manual_seed(seed)
    faces = torch.randint(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8, generator=gen)
    return normalise(faces)


def _p_fake(logits: Tensor) -> Tensor:
    return torch.softmax(logits.float(), dim=-1)[:, 1]


def _verify(release: Release, detector: DeepfakeDetector, tolerance: float) -> BuildReport:
    x = probe_faces()
    with torch.no_grad():
        pooled = detector._pooled(x)
        ours = {norm: _p_fake(detector.head(F.normalize(pooled, dim=-1) if norm else pooled)) for norm in (True, False)}
        reference, name, tol = _reference(release, detector.arch, tolerance)
        ref = reference(x)
    candidates = [release.head_norm] if release.head_norm is not None else [True, False]
    diffs = {norm: float((ours[norm] - ref).abs().max()) for norm in candidates}
    head_norm = min(diffs, key=lambda k: diffs[k])
    if not diffs[head_norm] <= tol:
        raise ReleaseError(
            release.file,
            f"the imported model disagrees with {name}: max |p(fake) diff| {diffs[head_norm]:.3g} > {tol:g}",
        )
    return BuildReport(arch=detector.arch, head_norm=head_norm, reference=name, max_abs_diff=diffs[head_norm])


def _reference(release: Release, arch: str, tolerance: float) -> tuple[Callable[[Tensor], Tensor], str, float]:
    if release.format == TORCHSCRIPT:
        return _traced_reference(release, tolerance)
    return _hf_reference(release, arch), "the HF CLIPVisionModel forward", tolerance


def _traced_reference(release: Release, tolerance: float) -> tuple[Callable[[Tensor], Tensor], str, float]:
    traced = release.traced
    probe = probe_faces()
    try:
        traced.float()
        traced(probe)
        return (lambda x: _p_fake(traced(x))), "the traced TorchScript graph", tolerance
    except Exception:  # a graph traced in bf16 may insist on bf16 inputs
        traced.to(torch.bfloat16)
        return (lambda x: _p_fake(traced(x.to(torch.bfloat16)))), "the traced TorchScript graph (bf16)", BF16_TOLERANCE


def _hf_reference(release: Release, arch: str) -> Callable[[Tensor], Tensor]:
    try:
        from transformers import CLIPVisionConfig, CLIPVisionModel
    except ImportError as e:  # pragma: no cover - a train dependency
        raise ReleaseError(release.file, f"checking the import needs transformers ({e})") from None
    model = CLIPVisionModel(CLIPVisionConfig(**hf_vision_config(arch))).eval()
    sd = {f"vision_model.{k}": v for k, v in release.backbone.items() if k != POSITION_IDS}
    target = model.state_dict()
    if not any(k.startswith("vision_model.") for k in target):  # transformers 5 has no wrapper level
        sd = {k.removeprefix("vision_model."): v for k, v in sd.items()}
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(POSITION_IDS)]
    if missing or result.unexpected_keys:
        raise ReleaseError(release.file, "does not fit HF CLIPVisionModel", (missing + result.unexpected_keys)[0])
    norm = bool(release.head_norm)
    weight, bias = release.head_weight, release.head_bias

    def forward(x: Tensor) -> Tensor:
        pooled = model(pixel_values=x).pooler_output
        return _p_fake(F.linear(F.normalize(pooled, dim=-1) if norm else pooled, weight, bias))

    return forward
