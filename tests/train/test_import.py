"""`dfmod-train import`: the authors' three released formats, built here as random-init stand-ins in exactly
their layouts (train/released/standins.py), imported, and checked against the authors' own forward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from train import cli
from train.checkpoint import load_checkpoint, read_checkpoint
from train.export import export_repository
from train.model import normalise
from train.released import formats, standins
from train.released.command import import_release
from train.released.errors import ReleaseError
from worker.core.model_config import MODEL_NAME, parse_parameters

REPO = Path(__file__).resolve().parents[2]
TINY = "dfmod/clip-vit-tiny"  # the backbone name of dfmod's `tiny` arch (train/released/hf_clip.py)
TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


def _faces(n: int = 5, seed: int = 3) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8))


def _reference_p_fake(module: nn.Module, faces: torch.Tensor) -> np.ndarray:
    """p(fake) as the authors compute it: softmax of their module's logits on CLIP-normalised crops."""
    return torch.softmax(standins.reference_logits(module, normalise(faces)), dim=-1)[:, 1].numpy()


def _imported_p_fake(checkpoint: Path, faces: torch.Tensor) -> np.ndarray:
    detector, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        return detector.fake_prob(normalise(faces)).numpy()


Builder = Callable[[Path], tuple[Path, nn.Module]]


def _lightning(head_norm: bool) -> Builder:
    def build(tmp: Path) -> tuple[Path, nn.Module]:
        module = standins.lightning_module("tiny", head_norm=head_norm, seed=1)
        return standins.save_lightning_ckpt(module, tmp / "model.ckpt", TINY, head_norm=head_norm), module

    return build


def _torchscript(head_norm: bool) -> Builder:
    def build(tmp: Path) -> tuple[Path, nn.Module]:
        module = standins.lightning_module("tiny", head_norm=head_norm, seed=2)
        return standins.save_torchscript(module, tmp / "model.torchscript"), module

    return build


def _gend(head_norm: bool | None) -> Builder:
    def build(tmp: Path) -> tuple[Path, nn.Module]:
        module = standins.gend_module("tiny", head_norm=bool(head_norm), seed=3)
        return standins.save_gend_folder(module, tmp / "GenD_tiny", TINY, head_norm=head_norm), module

    return build


CASES = {
    "lightning-LinearNorm": (_lightning(True), True),
    "lightning-linear": (_lightning(False), False),
    "torchscript-LinearNorm": (_torchscript(True), True),
    "torchscript-linear": (_torchscript(False), False),
    "gend-linear": (_gend(False), False),
    "gend-LinearNorm": (_gend(True), True),
    "gend-head-absent": (_gend(None), False),  # GenDConfig's default head is "linear"
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_the_reference_forward_in_torch_and_onnx(case: str, tmp_path: Path) -> None:
    build, head_norm = CASES[case]
    source, module = build(tmp_path)
    out = tmp_path / "imported.pt"
    report = import_release(str(source), out)
    assert report.head_norm is head_norm and report.arch == "tiny" and report.max_abs_diff <= TOL

    faces = _faces()
    reference = _reference_p_fake(module, faces)
    torch_diff = float(np.abs(_imported_p_fake(out, faces) - reference).max())
    assert torch_diff < TOL

    detector, meta = load_checkpoint(out)
    repo = export_repository(detector, tmp_path / "repo", backend="python", checkpoint_sha256=meta["sha256"])
    session = ort.InferenceSession(repo.onnx_path, providers=["CPUExecutionProvider"])
    prob, emb = session.run(["fake_prob", "embedding"], {"faces": faces.numpy()})
    assert float(np.abs(prob - reference).max()) < TOL
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # the embedding is unit-norm either way


def test_checkpoint_carries_provenance_and_the_release_hyper_parameters(tmp_path: Path) -> None:
    source, _ = _lightning(True)(tmp_path)
    out = tmp_path / "imported.pt"
    report = import_release(str(source), out)
    payload = read_checkpoint(out)
    imported = payload["imported"]
    assert imported["format"] == formats.LIGHTNING and imported["source"] == "model.ckpt"
    assert imported["revision"] == "" and imported["sha256"] == report.sha256
    import hashlib

    assert report.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert imported["hyper_parameters"]["head"] == "LinearNorm" and imported["hyper_parameters"]["lr"] == 8e-5
    assert payload["state_dict_scope"] == "full" and payload["head_norm"] is True
    assert payload["extra"]["threshold"] == 0.5  # the authors' decision rule until calibrated
    detector, _ = load_checkpoint(out)
    assert detector.weights == "model.ckpt" and detector.weights_sha256 == report.sha256


def test_the_trained_layernorm_copy_is_what_makes_parity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading peft's frozen `base_layer` instead of `ln_tuning_layers.default` must break parity."""
    source, module = _lightning(True)(tmp_path)
    original = formats.merge_ln_tuning

    def base_layer_instead(file: Path, sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        swapped = {
            k.replace(".base_layer.", ".@@.").replace(".ln_tuning_layers.default.", ".base_layer.").replace(
                ".@@.", ".ln_tuning_layers.default."
            ): v
            for k, v in sd.items()
        }
        return original(file, swapped, prefix)

    monkeypatch.setattr(formats, "merge_ln_tuning", base_layer_instead)
    out = tmp_path / "wrong.pt"
    import_release(str(source), out)  # self-consistent, so the importer's own check cannot see it ...
    faces = _faces()
    diff = float(np.abs(_imported_p_fake(out, faces) - _reference_p_fake(module, faces)).max())
    assert diff > 10 * TOL  # ... but the authors' forward (trained copies) does


def test_torchscript_state_dict_keeps_peft_names_under_its_own_prefix(tmp_path: Path) -> None:
    source, _ = _torchscript(True)(tmp_path)
    keys = list(torch.jit.load(str(source)).state_dict())
    assert any(k.startswith("net.feature_extractor.base_model.model.vision_model.") for k in keys)
    assert any(".ln_tuning_layers.default." in k for k in keys) and any(".base_layer." in k for k in keys)


def test_hub_repo_id_resolves_offline_from_the_cache(tmp_path: Path) -> None:
    folder, module = _gend(False)(tmp_path)
    cache = tmp_path / "hf-cache"
    commit = "a1b2c3d4" * 5
    standins.hub_cache_layout(
        cache, "yermandy/GenD_CLIP_L_14",
        {"config.json": folder / "config.json", "model.safetensors": folder / "model.safetensors"}, commit,
    )
    out = tmp_path / "out" / "gend.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "train.cli", "import", "yermandy/GenD_CLIP_L_14", "--out", str(out), "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["source"] == "yermandy/GenD_CLIP_L_14" and report["revision"] == commit
    detector, meta = load_checkpoint(out)
    assert detector.weights == f"yermandy/GenD_CLIP_L_14@{commit}"
    assert meta["imported"]["revision"] == commit
    faces = _faces(3)
    assert float(np.abs(_imported_p_fake(out, faces) - _reference_p_fake(module, faces)).max()) < TOL
    repo = export_repository(detector, tmp_path / "repo", backend="python", checkpoint_sha256=meta["sha256"])
    params = parse_parameters((Path(repo.model_dir) / "config.pbtxt").read_text())
    assert params["weights"] == f"yermandy/GenD_CLIP_L_14@{commit}"
    assert params["weights_sha256"] == report["sha256"] and params["weights_revision"] == commit
    assert params["weights_format"] == "gend" and params["head_norm"] == "false"
    assert params["threshold"] == "0.5" and Path(repo.model_dir).name == MODEL_NAME


# -- what is refused ----------------------------------------------------------------------------------------


def _truncated(tmp: Path) -> Path:
    path, _ = _lightning(True)(tmp)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _random_bytes(tmp: Path) -> Path:
    path = tmp / "model.ckpt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _not_clip(tmp: Path) -> Path:
    path = tmp / "model.ckpt"
    sd = {f"feature_extractor.base_model.model.layer{i}.conv.weight": torch.zeros(4, 4, 3, 3) for i in range(3)}
    torch.save({"state_dict": sd, "hyper_parameters": standins.hyper_parameters(TINY, True)}, path)
    return path


def _pe_backbone(tmp: Path) -> Path:
    folder = standins.save_gend_folder(standins.gend_module("tiny"), tmp / "GenD_PE_L", TINY, head_norm=False)
    config = json.loads((folder / "config.json").read_text())
    config["backbone"] = "vit_pe_core_large_patch14_336"  # GenD_PE_L's backbone (modeling_gend.py:138)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _three_classes(tmp: Path) -> Path:
    module = standins.lightning_module("tiny", num_classes=3)
    return standins.save_lightning_ckpt(module, tmp / "model.ckpt", TINY, num_classes=3)


def _three_class_head_only(tmp: Path) -> Path:
    """num_classes says 2 but the head has 3 rows: the tensors are checked, not only the config."""
    module = standins.lightning_module("tiny", num_classes=3)
    return standins.save_lightning_ckpt(module, tmp / "model.ckpt", TINY, num_classes=2)


def _unknown_key(tmp: Path) -> Path:
    module = standins.lightning_module("tiny")
    path = standins.save_lightning_ckpt(module, tmp / "model.ckpt", TINY)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["model.extra_layer.weight"] = torch.zeros(2, 2)
    torch.save(ckpt, path)
    return path


def _wrong_declared_backbone(tmp: Path) -> Path:
    module = standins.lightning_module("tiny")
    return standins.save_lightning_ckpt(module, tmp / "model.ckpt", "openai/clip-vit-large-patch14")


BAD = {
    "truncated": (_truncated, "zip"),
    "random-bytes": (_random_bytes, "not a PyTorch checkpoint"),
    "non-CLIP state dict": (_not_clip, "no CLIP vision tower"),
    "GenD with PE backbone": (_pe_backbone, "vit_pe_core_large_patch14_336"),
    "3 classes": (_three_classes, "num_classes is 3"),
    "3-row head": (_three_class_head_only, "3 classes"),
    "unknown key": (_unknown_key, "model.extra_layer.weight"),
    "declared backbone mismatch": (_wrong_declared_backbone, "openai/clip-vit-large-patch14"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_refused_with_one_line_and_nothing_written(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = BAD[case]
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    source = make(src_dir)
    capsys.readouterr()  # what building the stand-in printed is not the command's output
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = cli.main(["import", str(source), "--out", str(out_dir / "imported.pt")])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert expected in err and str(source) in err
    assert list(out_dir.iterdir()) == []  # nothing half-written


def test_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError) as info:
        import_release(str(_three_classes(tmp_path)), tmp_path / "x.pt")
    assert info.value.key == "hyper_parameters.num_classes"
    with pytest.raises(ReleaseError) as info:
        import_release(str(_pe_backbone(tmp_path)), tmp_path / "x.pt")
    assert info.value.key == "backbone" and info.value.file.endswith("config.json")


def test_missing_source_and_non_hub_name(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="no such file"):
        import_release(str(tmp_path / "nope" / "model.ckpt"), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_torchscript_traced_in_bf16_is_read_and_checked_in_bf16(tmp_path: Path) -> None:
    module = standins.lightning_module("tiny", head_norm=True, seed=4)
    source = standins.save_torchscript(module, tmp_path / "model.torchscript", dtype=torch.bfloat16)
    traced = torch.jit.load(str(source))
    assert all(v.dtype == torch.bfloat16 for v in traced.state_dict().values() if v.is_floating_point())
    report = import_release(str(source), tmp_path / "imported.pt")
    assert report.reference.endswith("(bf16)") and report.head_norm is True
    faces = _faces(4)
    with torch.no_grad():
        bf16 = torch.softmax(traced(normalise(faces).to(torch.bfloat16)).float(), -1)[:, 1].numpy()
    assert float(np.abs(_imported_p_fake(tmp_path / "imported.pt", faces) - bf16).max()) < 2e-2
