"""Random-init stand-ins of the released detectors, written in exactly the authors' layouts.

No real weights can be downloaded where dfmod is tested, so the tests (and `python -m train.released.bench`)
build the same modules the authors' code builds, with `transformers` and `peft` (dev/train extras), and
save them the way the authors did:

- `lightning_ckpt`: `DeepfakeDetectionModel`'s modules (yermandy/deepfake-detection src/model/dfdet.py:153-215):
  `feature_extractor` = CLIPEncoder (src/encoders/clip_encoder.py:26-29, no visual_projection) wrapped by
  `get_peft_model(..., LNTuningConfig(target_modules=...))` (dfdet.py:190-201, src/config.py:66-74), head
  `model.linear`; saved as `{"state_dict", "hyper_parameters", ...}` like Lightning. The trained LayerNorm
  copies (`ln_tuning_layers.default`) are set apart from `base_layer` so a reader that takes the wrong one fails.
- `torchscript`: that module traced on a CLIP-normalised batch and saved with `torch.jit.save`.
- `gend_folder`: GenD's `PreTrainedModel` (yermandy/GenD src/hf/modeling_gend.py:109-163) written by
  `save_pretrained` (config.json + model.safetensors), with the head given.

`reference_logits` is the authors' forward (`vision_model(x).pooler_output` -> LinearProbe) on the module.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.released.hf_clip import hf_vision_config

#: LN-tuning targets of the authors' config (yermandy/deepfake-detection src/config.py:68-74).
LN_TARGETS = ["pre_layrnorm", "layer_norm1", "layer_norm2", "post_layernorm", "layernorm"]


class ClipEncoder(nn.Module):
    """The authors' CLIPEncoder: `vision_model` (+ GenD's unused `visual_projection`), feature = pooler_output."""

    def __init__(self, arch: str, projection: bool) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(**hf_vision_config(arch))
        self.vision_model = CLIPVisionModel(config)
        if projection:
            self.visual_projection = nn.Linear(config.hidden_size, 768 if arch == "ViT-L-14" else 32, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.vision_model(pixel_values=x).pooler_output


class LinearProbe(nn.Module):
    """The authors' head (src/heads/head.py:15-28): optional L2 norm, then `linear`."""

    def __init__(self, dim: int, num_classes: int, normalize_inputs: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        self.normalize_inputs = normalize_inputs

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(F.normalize(x, p=2, dim=1) if self.normalize_inputs else x)


class StandIn(nn.Module):
    """feature_extractor + model, the two submodules whose names the released state dicts carry."""

    def __init__(self, feature_extractor: nn.Module, head: LinearProbe) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.model = head

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.feature_extractor(x))


class Traced(nn.Module):
    """A wrapper level, so the traced state dict has a prefix of its own as the released one does."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _dim(arch: str) -> int:
    return int(hf_vision_config(arch)["hidden_size"])


def _perturb_trained_layernorms(module: nn.Module, seed: int) -> None:
    """Make every `ln_tuning_layers.default` copy differ from its `base_layer` (as training does)."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".ln_tuning_layers.default." in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def lightning_module(arch: str = "tiny", *, head_norm: bool = True, num_classes: int = 2, seed: int = 0) -> StandIn:
    from peft import LNTuningConfig, get_peft_model

    torch.manual_seed(seed)
    with warnings.catch_warnings():  # peft warns on plain nn.LayerNorm targets, which LN-tuning is made for
        warnings.simplefilter("ignore", UserWarning)
        encoder = get_peft_model(ClipEncoder(arch, projection=False), LNTuningConfig(target_modules=LN_TARGETS))
    module = StandIn(encoder, LinearProbe(_dim(arch), num_classes, head_norm))
    _perturb_trained_layernorms(module, seed)
    return module.eval()


def hyper_parameters(backbone: str, head_norm: bool, num_classes: int = 2) -> dict[str, Any]:
    """The keys of the authors' Config that an import reads (src/config.py:83-101), as model_dump() writes them."""
    return {
        "run_name": "standin",
        "seed": 42,
        "num_classes": num_classes,
        "backbone": backbone,
        "freeze_feature_extractor": True,
        "head": "LinearNorm" if head_norm else "linear",
        "peft": {
            "enabled": True,
            "lora": {"enabled": False},
            "ln_tuning": {"enabled": True, "target_modules": LN_TARGETS},
        },
        "slerp_feature_augmentation": True,
        "lr": 8e-5,
        "min_lr": 5e-5,
        "max_epochs": 10,
        "batch_size": 128,
        "precision": "bf16-mixed",
        "loss": {"ce_labels": 1.0, "uniformity": 0.0, "alignment_labels": 0.0},
    }


def save_lightning_ckpt(
    module: StandIn, path: Path, backbone: str, *, head_norm: bool = True, num_classes: int = 2
) -> Path:
    """`model.ckpt` as Lightning writes it (the keys `inference.py` reads: state_dict, hyper_parameters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "epoch": 9,
            "global_step": 1000,
            "pytorch-lightning_version": "2.5.0",
            "state_dict": module.state_dict(),
            "hyper_parameters": hyper_parameters(backbone, head_norm, num_classes),
        },
        path,
    )
    return path


def save_torchscript(module: StandIn, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The module traced on a CLIP-normalised batch; `dtype=torch.bfloat16` traces it in bf16 (the released
    file, 607 MB for a 1.2 GB model, is half precision; inference_torchscript.py:7 runs it in bf16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, 3, 224, 224, dtype=dtype)
    with torch.no_grad():
        traced = torch.jit.trace(Traced(copy.deepcopy(module)).to(dtype).eval(), example, check_trace=False)
    torch.jit.save(traced, str(path))
    return path


def gend_module(arch: str = "tiny", *, head_norm: bool = False, seed: int = 0) -> StandIn:
    torch.manual_seed(seed)
    module = StandIn(ClipEncoder(arch, projection=True), LinearProbe(_dim(arch), 2, head_norm))
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():  # trained LayerNorms are not the identity init
        for name, p in module.named_parameters():
            if "layer_norm" in name or "layrnorm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return module.eval()


def save_gend_folder(module: StandIn, folder: Path, backbone: str, *, head_norm: bool | None) -> Path:
    """What `GenD.save_pretrained` writes: config.json (GenDConfig) + model.safetensors.

    config.json has the keys of the released yermandy/GenD_CLIP_L_14 (hub commit 9413725): architectures,
    backbone, dtype, head, model_type, transformers_version.

    `head_norm=None` leaves `head` out of config.json (GenDConfig's default then applies).
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "architectures": ["GenD"],
        "backbone": backbone,
        "model_type": "GenD",
        "dtype": "float32",
        "transformers_version": "4.56.2",
    }
    if head_norm is not None:
        config["head"] = "LinearNorm" if head_norm else "linear"
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def reference_logits(module: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out: Tensor = module(x)
    return out


def hub_cache_layout(cache_dir: Path, repo_id: str, files: dict[str, Path], commit: str = "0" * 40) -> Path:
    """Place `files` where huggingface_hub keeps a snapshot (`models--owner--name/snapshots/<commit>/`).

    Blobs are named by content hash and snapshot entries link to them, with `refs/main` naming the commit,
    which is the cache layout `snapshot_download` resolves with HF_HUB_OFFLINE=1.
    """
    import hashlib
    import os
    import shutil

    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        blob = repo_dir / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, blob)
        link = snapshot / name
        link.unlink(missing_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snapshot
