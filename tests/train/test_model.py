"""The detector, its factory and its checkpoints (train/model.py, train/factory.py, train/checkpoint.py)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from train.checkpoint import load_checkpoint, save_checkpoint
from train.factory import ARCHES, create_model, file_provenance
from train.model import (
    CLIP_MEAN,
    CLIP_STD,
    DeepfakeDetector,
    ServingModel,
    layernorms,
    normalise,
    parameter_breakdown,
)


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to fetch pretrained weights fails, as it does offline."""
    from open_clip import pretrained

    def refuse(*args: object, **kwargs: object) -> str:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(pretrained, "download_pretrained", refuse)
    yield


def _faces(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 224, 224, 3), dtype=torch.uint8, generator=g)


def _perturb_trainables(detector: DeepfakeDetector, seed: int = 1) -> None:
    """Pretend training happened: move every trainable parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in detector.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_vit_l14_breakdown_matches_the_paper_without_download(no_download: None) -> None:
    detector = create_model("ViT-L-14")
    b = parameter_breakdown(detector)
    assert detector.weights == "random-init"
    assert detector.feature_dim == 1024
    assert b["layernorm_count"] == 50
    assert b["groups"]["layernorm"] == 102_400
    assert b["groups"]["head"] == 2_050
    assert b["trainable"] == 104_450
    assert b["trainable_groups"] == {"layernorm": 102_400, "head": 2_050}
    assert b["total"] == sum(p.numel() for p in detector.parameters())
    assert b["frozen"] == b["total"] - b["trainable"]
    assert 0.0003 < b["trainable_fraction_of_encoder"] < 0.0004  # "about 0.03 % of the encoder"
    assert getattr(detector.visual, "proj", None) is None  # feature taken before the projection


def test_tiny_breakdown() -> None:
    detector = create_model("tiny")
    b = parameter_breakdown(detector)
    width = 64
    assert detector.feature_dim == width
    assert b["layernorm_count"] == 2 + 2 * 2  # ln_pre, ln_post, ln_1/ln_2 of two blocks
    assert b["groups"]["layernorm"] == 6 * 2 * width
    assert b["groups"]["head"] == 2 * width + 2
    assert b["trainable"] == 6 * 2 * width + 2 * width + 2
    assert b["total"] == sum(p.numel() for p in detector.parameters())
    assert sum(b["groups"].values()) == b["total"]


def test_ln_tuning_leaves_only_layernorms_and_head_trainable() -> None:
    detector = create_model("tiny", ln_tuning=False)
    assert all(p.requires_grad for p in detector.parameters())
    detector.apply_ln_tuning()
    ln_params = {id(p) for _, ln in layernorms(detector.visual) for p in ln.parameters()}
    head_params = {id(p) for p in detector.head.parameters()}
    for name, p in detector.named_parameters():
        assert p.requires_grad == (id(p) in ln_params or id(p) in head_params), name
    assert set(detector.trainable_state_dict()) == {n for n, p in detector.named_parameters() if p.requires_grad}


def test_features_are_unit_norm_and_outputs_consistent() -> None:
    detector = create_model("tiny").eval()
    x = normalise(_faces(3))
    with torch.no_grad():
        logits, feats = detector(x)
        prob = detector.fake_prob(x)
    assert logits.shape == (3, 2) and feats.shape == (3, 64)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(prob, torch.softmax(logits, dim=-1)[:, 1])
    assert ((prob >= 0) & (prob <= 1)).all()


def test_normalise_matches_torchvision_computation() -> None:
    faces = _faces(2, seed=7)
    expected = torch.stack(
        [TF.normalize(face.permute(2, 0, 1).float() / 255.0, list(CLIP_MEAN), list(CLIP_STD)) for face in faces]
    )
    out = normalise(faces)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 224, 224)
    torch.testing.assert_close(out, expected)
    with pytest.raises(TypeError):
        normalise(faces.float())


def test_serving_model_is_normalise_then_detector() -> None:
    detector = create_model("tiny").eval()
    faces = _faces(4)
    with torch.no_grad():
        prob, emb = ServingModel(detector)(faces)
        torch.testing.assert_close(prob, detector.fake_prob(normalise(faces)))
        torch.testing.assert_close(emb, detector.features(normalise(faces)))


def test_init_is_seed_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_model("tiny", seed=0)
    after = torch.rand(1)
    b = create_model("tiny", seed=0)
    c = create_model("tiny", seed=1)
    assert torch.equal(before, after)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["visual.conv1.weight"], sc["visual.conv1.weight"])


def test_unknown_arch_and_missing_weights_file_fail_clearly(tmp_path: Path) -> None:
    assert {"ViT-L-14", "ViT-B-16", "ViT-B-32", "tiny"} <= set(ARCHES)
    with pytest.raises(ValueError, match="unknown arch"):
        create_model("ViT-X-99")
    with pytest.raises(FileNotFoundError):
        create_model("tiny", str(tmp_path / "absent.pt"))


def test_openai_weights_offline_fail_with_a_clear_message(no_download: None) -> None:
    with pytest.raises(RuntimeError, match="network access"):
        create_model("ViT-B-32", "openai")


def test_load_trainable_state_dict_rejects_unknown_keys_and_shapes() -> None:
    detector = create_model("tiny")
    with pytest.raises(KeyError):
        detector.load_trainable_state_dict({"nope.weight": torch.zeros(1)})
    with pytest.raises(ValueError):
        detector.load_trainable_state_dict({"head.bias": torch.zeros(3)})


def test_checkpoint_round_trip_is_exact_and_small(tmp_path: Path) -> None:
    detector = create_model("tiny", seed=3).eval()
    _perturb_trainables(detector)
    path = tmp_path / "ck.pt"
    sha = save_checkpoint(path, detector, {"lr": 8e-5, "out": tmp_path}, {"threshold": 0.37, "uncertain_band": 0.05})
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.stat().st_size < 64 * 1024  # LayerNorms + head only
    loaded, meta = load_checkpoint(path)
    x = normalise(_faces(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], detector(x)[0], rtol=0, atol=0)
    assert meta["sha256"] == sha
    assert meta["arch"] == "tiny" and meta["init_seed"] == 3 and meta["weights"] == "random-init"
    assert meta["extra"] == {"threshold": 0.37, "uncertain_band": 0.05}
    assert meta["config"]["out"] == str(tmp_path)  # made JSON-able so weights_only loading works
    assert loaded.weights == "random-init"


def test_checkpoint_on_a_backbone_file_needs_that_file(tmp_path: Path, weights_cache_dir: Path) -> None:
    source = create_model("tiny", seed=5)
    backbone = tmp_path / "backbone.pt"
    torch.save({"state_dict": {f"visual.{k}": v for k, v in source.visual.state_dict().items()}}, backbone)
    detector = create_model("tiny", str(backbone), seed=9).eval()
    assert detector.weights == file_provenance(backbone)
    assert detector.weights.startswith("sha256:") and len(detector.weights) == len("sha256:") + 16
    for k, v in source.visual.state_dict().items():
        assert torch.equal(detector.visual.state_dict()[k], v), k

    _perturb_trainables(detector)
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, detector, {})
    load_checkpoint(ck)  # the backbone file was cached when the model was built (train.weights_cache)
    shutil.rmtree(weights_cache_dir / "sha256")  # read-only files in a writable folder: removable
    with pytest.raises(ValueError, match="backbone_weights"):
        load_checkpoint(ck)
    other = tmp_path / "other.pt"
    torch.save(create_model("tiny", seed=6).visual.state_dict(), other)
    with pytest.raises(ValueError, match="trained on"):
        load_checkpoint(ck, backbone_weights=str(other))
    loaded, _ = load_checkpoint(ck, backbone_weights=str(backbone))
    x = normalise(_faces(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], detector(x)[0], rtol=0, atol=0)


def test_weights_file_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not match"):
        create_model("tiny", str(bad))


def test_layernorms_finds_open_clip_layernorms() -> None:
    detector = create_model("tiny")
    names = [n for n, _ in layernorms(detector.visual)]
    assert names[0] == "ln_pre" and names[-1] == "ln_post"
    assert all(isinstance(m, nn.LayerNorm) for _, m in layernorms(detector.visual))
