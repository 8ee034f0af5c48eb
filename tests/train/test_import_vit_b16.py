"""One release at a real CLIP size: a ViT-B/16 `model.ckpt` stand-in (the authors' Backbone.CLIP_B_16,
yermandy/deepfake-detection src/config.py:38) imported, exported and compared with the authors' forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from train.checkpoint import load_checkpoint
from train.export import export_repository
from train.model import normalise
from train.released import standins
from train.released.command import import_release

pytestmark = pytest.mark.usefixtures("one_thread")


def test_vit_b16_model_ckpt_matches_the_reference_in_torch_and_onnx(tmp_path: Path) -> None:
    backbone = "openai/clip-vit-base-patch16"
    module = standins.lightning_module("ViT-B-16", head_norm=True, seed=5)
    source = standins.save_lightning_ckpt(module, tmp_path / "model.ckpt", backbone, head_norm=True)
    out = tmp_path / "imported.pt"
    report = import_release(str(source), out)
    assert report.arch == "ViT-B-16" and report.max_abs_diff < 1e-4

    faces = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8))
    reference = torch.softmax(standins.reference_logits(module, normalise(faces)), dim=-1)[:, 1].numpy()
    detector, meta = load_checkpoint(out)
    with torch.no_grad():
        got = detector.fake_prob(normalise(faces)).numpy()
    assert float(np.abs(got - reference).max()) < 1e-4
    assert detector.feature_dim == 768

    repo = export_repository(detector, tmp_path / "repo", backend="python", checkpoint_sha256=meta["sha256"])
    session = ort.InferenceSession(repo.onnx_path, providers=["CPUExecutionProvider"])
    (prob,) = session.run(["fake_prob"], {"faces": faces.numpy()})
    assert float(np.abs(prob - reference).max()) < 1e-4
