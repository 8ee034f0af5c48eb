"""Read the three released formats into one `Release`, refusing whatever they do not say exactly.

Facts each reader relies on (yermandy/deepfake-detection@0b872f7, yermandy/GenD@e03532d):

- `model.ckpt` is a Lightning checkpoint `{"state_dict", "hyper_parameters", ...}` of
  `DeepfakeDetectionModel` (src/model/dfdet.py:127-131: `save_hyperparameters(config.model_dump())`).
  Its backbone is `feature_extractor` wrapped by peft's `get_peft_model` (dfdet.py:173-201), so the HF names
  sit under `feature_extractor.base_model.model.vision_model.`; LN-tuning (src/config.py:66-74) wraps every
  LayerNorm, keeping the frozen original as `<ln>.base_layer.*` and the TRAINED copy, the only one the
  forward uses, as `<ln>.ln_tuning_layers.default.*`. The head is `model.linear` (dfdet.py:207-215,
  src/heads/head.py:15-28); `head` "LinearNorm" L2-normalises its input, "linear" does not
  (src/config.py:24-26, head.py:21-24). `num_classes` must be 2 (p(fake) = softmax[:, 1], inference.py:71-74).
- `model.torchscript` is that model traced (inference_torchscript.py:16-19, 44-62: input CLIP-normalised
  N,3,224,224, output logits N,2). Its state dict keeps the peft names under a prefix the trace chose.
  No hyper-parameters: the head's normalisation is read off the traced graph by running it (`build`).
- GenD (src/hf/modeling_gend.py:109-163): `config.json` holds `backbone` and `head` (default "linear",
  modeling_gend.py:112; "LinearNorm" normalises, :150-156); `model.safetensors` holds
  `feature_extractor.vision_model.*` (plain HF names, the trained LayerNorms in place),
  `feature_extractor.visual_projection.weight` (unused by the forward, :41-48) and `model.linear.*`.
  Non-CLIP backbones (PE, DINOv3: :135-145) are refused.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from train.factory import sha256_file
from train.released.errors import ReleaseError
from train.released.hf_clip import KNOWN_BACKBONES, POSITION_IDS

LIGHTNING = "lightning-ckpt"
TORCHSCRIPT = "torchscript"
GEND = "gend"
FORMATS = (LIGHTNING, TORCHSCRIPT, GEND)

HEADS = {"LinearNorm": True, "linear": False}  # head name -> L2 norm before the linear layer
CKPT_BACKBONE = "feature_extractor.base_model.model.vision_model."
GEND_BACKBONE = "feature_extractor.vision_model."
GEND_UNUSED = ("feature_extractor.visual_projection.weight",)
HEAD_KEYS = ("model.linear.weight", "model.linear.bias")
BASE_LAYER = "base_layer."


@dataclass
class Release:
    """A released detector as read: HF-named backbone tensors, head, head normalisation, provenance."""

    format: str
    file: Path  # the file the weights came from (its sha256 is the provenance hash)
    backbone: dict[str, Tensor]  # HF CLIPVisionModel names without the `vision_model.` prefix
    head_weight: Tensor
    head_bias: Tensor
    head_norm: bool | None  # None: not stated by the format (torchscript), decided by running the graph
    backbone_name: str | None
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # hub repo id, or the file/folder name
    revision: str = ""  # hub commit, when from the hub
    sha256: str = ""
    traced: Any = None  # the loaded TorchScript module (torchscript only): the reference forward

    def record(self) -> dict[str, Any]:
        """`payload["imported"]` of the dfmod checkpoint (issue 10's recipes read `hyper_parameters`)."""
        return {
            "format": self.format,
            "source": self.source,
            "revision": self.revision,
            "sha256": self.sha256,
            "file": self.file.name,
            "backbone": self.backbone_name,
            "head_norm": self.head_norm,
            "hyper_parameters": self.hyper_parameters,
        }


# -- format detection --------------------------------------------------------------------------------------


def detect(path: Path) -> tuple[str, Path]:
    """(format, weights file) of a local file or folder; ReleaseError when it is none of the three."""
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            if not (path / "config.json").is_file():
                raise ReleaseError(path, "a GenD folder needs config.json beside model.safetensors; it is missing")
            return GEND, path / "model.safetensors"
        for name, fmt in (("model.ckpt", LIGHTNING), ("model.torchscript", TORCHSCRIPT)):
            if (path / name).is_file():
                return fmt, path / name
        raise ReleaseError(path, "no model.ckpt, model.torchscript or config.json + model.safetensors in this folder")
    if not path.is_file():
        raise ReleaseError(path, "no such file or folder (nor a hub repo id)")
    if path.suffix == ".safetensors" or path.name == "config.json":
        raise ReleaseError(path, "a GenD release is a folder (config.json + model.safetensors): pass the folder")
    if not zipfile.is_zipfile(path):
        raise ReleaseError(
            path, "not a PyTorch checkpoint or TorchScript archive (not a zip archive: truncated or another format)"
        )
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ReleaseError(path, f"corrupt archive ({e})") from None
    if any(re.search(r"(^|/)code/", n) for n in names) or any(n.endswith("/constants.pkl") for n in names):
        return TORCHSCRIPT, path
    if any(n.endswith("data.pkl") for n in names):
        return LIGHTNING, path
    raise ReleaseError(path, "a zip archive that is neither a torch.save checkpoint nor a TorchScript archive")


# -- shared checks -----------------------------------------------------------------------------------------


def check_backbone_name(file: Path, name: Any, key: str) -> str:
    if not isinstance(name, str) or not name:
        raise ReleaseError(file, "no backbone name", key)
    if name in KNOWN_BACKBONES:
        return name
    if "clip" not in name.lower():
        raise ReleaseError(
            file,
            f"backbone {name!r} is not a CLIP ViT; dfmod imports CLIP backbones only "
            f"({', '.join(k for k in KNOWN_BACKBONES if k.startswith('openai/'))})",
            key,
        )
    raise ReleaseError(
        file, f"CLIP backbone {name!r} is not one dfmod serves (224 px OpenAI CLIP ViT-B/16, B/32, L/14)", key
    )


def head_norm_of(file: Path, head: Any, key: str) -> bool:
    if head not in HEADS:
        raise ReleaseError(file, f"unknown head {head!r} (expected one of {sorted(HEADS)})", key)
    return HEADS[head]


def _head(file: Path, sd: Mapping[str, Tensor], weight_key: str, bias_key: str) -> tuple[Tensor, Tensor]:
    for key in (weight_key, bias_key):
        if key not in sd:
            raise ReleaseError(file, "missing (the linear head)", key)
    weight, bias = sd[weight_key], sd[bias_key]
    if weight.dim() != 2 or bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
        raise ReleaseError(
            file, f"head shapes {tuple(weight.shape)} / {tuple(bias.shape)} are not (C, D) / (C,)", weight_key
        )
    if weight.shape[0] != 2:
        raise ReleaseError(
            file, f"{weight.shape[0]} classes; dfmod serves binary real/fake detectors (2 classes)", weight_key
        )
    return weight.detach().float(), bias.detach().float()


def merge_ln_tuning(file: Path, sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Backbone tensors under `prefix`, each peft LN-tuned LayerNorm replaced by its TRAINED copy.

    `<ln>.ln_tuning_layers.default.{weight,bias}` becomes `<ln>.{weight,bias}`; `<ln>.base_layer.*` (the
    frozen original, which the forward never uses) is dropped but must be there, so a file that is not
    what peft writes is refused rather than half-read.
    """
    out: dict[str, Tensor] = {}
    base: set[str] = set()
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if ".ln_tuning_layers." in name:
            module, _, param = name.partition(".ln_tuning_layers.")
            if not param.startswith("default.") or param.count(".") != 1:
                raise ReleaseError(file, "only the peft adapter 'default' is understood", key)
            out[f"{module}.{param.removeprefix('default.')}"] = value
        elif f".{BASE_LAYER}" in f".{name}":
            module, _, param = name.partition(f".{BASE_LAYER}")
            base.add(f"{module}.{param}")
        else:
            out[name] = value
    trained = {k for k in out if k in base}
    if base != trained:
        key = sorted(base - trained)[0]
        raise ReleaseError(file, "peft base_layer without its trained ln_tuning_layers.default copy", prefix + key)
    return out


def _only(
    file: Path, sd: Mapping[str, Tensor], allowed_prefixes: tuple[str, ...], allowed_keys: tuple[str, ...]
) -> None:
    for key in sd:
        if key in allowed_keys or key.startswith(allowed_prefixes):
            continue
        raise ReleaseError(file, "unexpected tensor (not a CLIP vision tower nor the linear head)", key)


def _tensors(file: Path, obj: Any, what: str) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping) or not obj:
        raise ReleaseError(file, f"{what} is not a non-empty mapping of tensors")
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise ReleaseError(file, f"{what} holds a {type(value).__name__}, not a tensor", str(key))
        if not value.is_floating_point() and not str(key).endswith(POSITION_IDS):
            raise ReleaseError(file, f"{value.dtype} tensor where weights are floating point", str(key))
    return {str(k): v for k, v in obj.items()}


# -- the three readers -------------------------------------------------------------------------------------


def read_lightning(file: Path) -> Release:
    try:
        ckpt: Any = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReleaseError(file, f"cannot be read as a checkpoint with weights_only=True ({first})") from None
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ReleaseError(file, "not a Lightning checkpoint (no state_dict)", "state_dict")
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, Mapping):
        raise ReleaseError(file, "not a deepfake-detection checkpoint (no hyper_parameters)", "hyper_parameters")
    sd = _tensors(file, ckpt["state_dict"], "state_dict")
    if not any(k.startswith(CKPT_BACKBONE) for k in sd):
        raise ReleaseError(
            file,
            f"no CLIP vision tower under {CKPT_BACKBONE!r} (not a deepfake-detection CLIP checkpoint)",
            "state_dict",
        )
    _only(file, sd, (CKPT_BACKBONE,), HEAD_KEYS)
    num_classes = hp.get("num_classes", 2)
    if num_classes != 2:
        raise ReleaseError(
            file,
            f"num_classes is {num_classes}; dfmod serves binary real/fake detectors",
            "hyper_parameters.num_classes",
        )
    name = check_backbone_name(file, _str(hp.get("backbone")), "hyper_parameters.backbone")
    head_norm = head_norm_of(file, _str(hp.get("head")), "hyper_parameters.head")
    _refuse_lora(file, hp)
    weight, bias = _head(file, sd, *HEAD_KEYS)
    return Release(
        format=LIGHTNING,
        file=file,
        backbone=merge_ln_tuning(file, sd, CKPT_BACKBONE),
        head_weight=weight,
        head_bias=bias,
        head_norm=head_norm,
        backbone_name=name,
        hyper_parameters=_plain(dict(hp)),
    )


def _refuse_lora(file: Path, hp: Mapping[str, Any]) -> None:
    peft = hp.get("peft")
    lora = peft.get("lora") if isinstance(peft, Mapping) else None
    if isinstance(peft, Mapping) and peft.get("enabled") and isinstance(lora, Mapping) and lora.get("enabled"):
        raise ReleaseError(file, "LoRA checkpoints are not understood (LN-tuning only)", "hyper_parameters.peft.lora")


def read_torchscript(file: Path) -> Release:
    try:
        traced = torch.jit.load(str(file), map_location="cpu")
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReleaseError(file, f"not a loadable TorchScript archive ({first})") from None
    traced.eval()
    sd = _tensors(file, dict(traced.state_dict()), "state_dict")
    prefixes = {k[: k.index("vision_model.") + len("vision_model.")] for k in sd if "vision_model." in k}
    if len(prefixes) != 1:
        problem = (
            "no CLIP vision tower (no vision_model.* tensors)"
            if not prefixes
            else f"several vision towers {sorted(prefixes)}"
        )
        raise ReleaseError(file, problem, "state_dict")
    (prefix,) = prefixes
    heads = sorted(k for k in sd if not k.startswith(prefix) and k.endswith("linear.weight"))
    if len(heads) != 1:
        raise ReleaseError(file, f"expected exactly one linear head outside the tower, found {heads}", "state_dict")
    head_w = heads[0]
    head_b = head_w.removesuffix("weight") + "bias"
    _only(file, sd, (prefix,), (head_w, head_b))
    weight, bias = _head(file, sd, head_w, head_b)
    return Release(
        format=TORCHSCRIPT,
        file=file,
        backbone=merge_ln_tuning(file, sd, prefix),
        head_weight=weight,
        head_bias=bias,
        head_norm=None,
        backbone_name=None,
        traced=traced,
    )


def read_gend(folder: Path) -> Release:
    config_file, weights_file = folder / "config.json", folder / "model.safetensors"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReleaseError(config_file, f"not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise ReleaseError(config_file, "not a JSON object")
    model_type = config.get("model_type", "GenD")
    if model_type != "GenD":
        raise ReleaseError(config_file, f"model_type {model_type!r} is not a GenD model", "model_type")
    name = check_backbone_name(config_file, config.get("backbone"), "backbone")
    # absent head = GenDConfig's default, as GenD.from_pretrained would build it (modeling_gend.py:112)
    head_norm = head_norm_of(config_file, config.get("head", "linear"), "head")
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as e:  # pragma: no cover - a dev/train dependency
        raise ReleaseError(weights_file, f"reading GenD weights needs safetensors ({e})") from None
    try:
        raw = load_file(str(weights_file), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ReleaseError(weights_file, f"not a readable safetensors file ({str(e).splitlines()[0]})") from None
    sd = _tensors(weights_file, raw, "model.safetensors")
    if not any(k.startswith(GEND_BACKBONE) for k in sd):
        raise ReleaseError(weights_file, f"no CLIP vision tower under {GEND_BACKBONE!r}", "feature_extractor")
    _only(weights_file, sd, (GEND_BACKBONE,), HEAD_KEYS + GEND_UNUSED)
    backbone = {k[len(GEND_BACKBONE) :]: v for k, v in sd.items() if k.startswith(GEND_BACKBONE)}
    weight, bias = _head(weights_file, sd, *HEAD_KEYS)
    return Release(
        format=GEND,
        file=weights_file,
        backbone=backbone,
        head_weight=weight,
        head_bias=bias,
        head_norm=head_norm,
        backbone_name=name,
        hyper_parameters=_plain(config),
    )


def _str(value: Any) -> Any:
    """A str-valued enum (the authors' `Head`/`Backbone`) as its value; anything else unchanged."""
    return value.value if hasattr(value, "value") and isinstance(value.value, str) else value


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(d, default=str))
    return out


READERS = {LIGHTNING: read_lightning, TORCHSCRIPT: read_torchscript}


def read_local(path: Path) -> Release:
    """A release from a local file or folder (format detected), with its sha256 and source name."""
    fmt, weights_file = detect(path)
    release = read_gend(path) if fmt == GEND else READERS[fmt](weights_file)
    release.source = path.name
    release.sha256 = sha256_file(release.file)
    return release


def read_release(source: str, revision: str | None = None, filename: str | None = None) -> Release:
    """A release from a local path, or from a hub repo id through `huggingface_hub` (cache/offline aware)."""
    path = Path(source).expanduser()
    if path.exists():
        if revision:
            raise ReleaseError(path, "--revision applies to hub repo ids, not local paths")
        release = read_local(path / filename if filename else path)
        return release
    from train.released.hub import HUB_ID, fetch

    if not HUB_ID.match(source):
        raise ReleaseError(path, "no such file or folder (nor a hub repo id owner/name)")
    folder, commit = fetch(source, revision, filename)
    release = read_local(folder / filename if filename else folder)
    release.source, release.revision = source, commit
    return release
