"""Architectures and weights sources by name, without torch (the CLI's parsers read them).

`train.factory` builds the model from these; `IMAGE_SIZE` is the serving contract's crop size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.core.model_config import CROP_SIZE as IMAGE_SIZE

RANDOM_INIT = "random-init"
OPENAI = "openai"


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: an open_clip config name, or an inline vision config (`tiny`)."""

    name: str
    open_clip_name: str | None
    vision_cfg: dict[str, Any] = field(default_factory=dict)
    quick_gelu: bool = True
    description: str = ""

    def resolved_vision_cfg(self) -> dict[str, Any]:
        if self.open_clip_name is None:
            return dict(self.vision_cfg)
        import open_clip

        cfg = open_clip.get_model_config(self.open_clip_name)
        if cfg is None:
            raise ValueError(f"open_clip has no model config {self.open_clip_name!r}")
        return dict(cfg["vision_cfg"])


#: Supported architectures. The CLIP ones map to the QuickGELU configs because the OpenAI weights need it.
ARCHES: dict[str, ArchSpec] = {
    "ViT-L-14": ArchSpec("ViT-L-14", "ViT-L-14-quickgelu", description="paper backbone, D=1024"),
    "ViT-B-16": ArchSpec("ViT-B-16", "ViT-B-16-quickgelu", description="D=768"),
    "ViT-B-32": ArchSpec("ViT-B-32", "ViT-B-32-quickgelu", description="D=768"),
    "tiny": ArchSpec(
        "tiny",
        None,
        vision_cfg={"image_size": IMAGE_SIZE, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
        description="test/demo ViT: width 64, 2 layers, 2 heads, patch 32, D=64",
    ),
}


def arch_spec(arch: str) -> ArchSpec:
    try:
        return ARCHES[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHES)}") from None
