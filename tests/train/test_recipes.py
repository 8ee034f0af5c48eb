"""The named recipes against the reference code's equations, written out here from the reference sources.

Each test re-implements one piece of yermandy/deepfake-detection@0b872f7 or GenD@e03532d from its
source (cited per test) and checks that a `fit` step, schedule or augmentation chain built from the
recipe gives the same numbers. The random draws (permutations, t, augmentation parameters) are shared
by seeding both sides alike; everything computed from them is independent.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import optim
from torchvision.transforms import v2

from train.augment import build_train_pipeline, sample_seed
from train.data.manifest import CropRecord, write_manifest
from train.fit import FitConfig, Trainer, default_weights, lr_factor
from train.model import normalise
from train.recipes import (
    GEND_MAIN,
    HYPER_PARAMETERS,
    PAPER,
    RECIPES,
    recipe_from_hparams,
    settings_from_hparams,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# -- the reference's functions, written from their sources -------------------------------------------------


def ref_slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """deepfake-detection src/model/dfdet.py:66-97."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    dot = torch.sum(a * b, dim=-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.acos(dot)
    return torch.sin(theta - t * theta) / torch.sin(theta) * a + torch.sin(t * theta) / torch.sin(theta) * b


def ref_slerp_feature_augmentation(
    features: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, t_range: tuple[float, float]
) -> torch.Tensor:
    """dfdet.py:273-309: in place, per class, randperm partners, t ~ U[t0, t1] per row."""
    features = features.clone()
    for c in torch.unique(labels):
        mask = labels == c
        if mask.sum() < 2:
            continue
        cf = features[mask]
        idx2 = torch.randperm(len(cf), generator=gen)
        t = torch.rand((len(cf), 1), generator=gen) * (t_range[1] - t_range[0]) + t_range[0]
        features[mask] = ref_slerp(cf, cf[idx2], t)
    return features


def ref_alignment(z: torch.Tensor, labels: torch.Tensor, alpha: float = 2) -> torch.Tensor:
    """src/losses/unifalign.py:4-43."""
    mask = (labels[:, None] == labels[None, :]).triu(diagonal=1)
    pos = torch.nonzero(mask, as_tuple=False)
    if pos.numel() == 0:
        return torch.tensor(0.0)
    return (z[pos[:, 0]] - z[pos[:, 1]]).norm(p=2, dim=1).pow(alpha).mean()


def ref_uniformity(x: torch.Tensor, t: float = 2, clip_value: float = 1e-6) -> torch.Tensor:
    """src/losses/unifalign.py:46-63."""
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().clamp(min=clip_value).log()


def ref_loss(cfg: FitConfig, logits: torch.Tensor, labels: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """src/loss.py:40-69 (both repositories): weighted CE, alignment and uniformity on L2 embeddings."""
    total = cfg.ce_weight * F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
    if cfg.alignment_weight:
        total = total + cfg.alignment_weight * ref_alignment(emb, labels)
    if cfg.uniformity_weight:
        total = total + cfg.uniformity_weight * ref_uniformity(emb)
    return total


def ref_param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """dfdet.py:609-623 / GenD.py:283-297: 'bias' or 'norm' in the name -> no decay."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if "bias" in name or "norm" in name or "ln" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def ref_scheduler(cfg: FitConfig, opt: optim.Optimizer, steps_per_epoch: int) -> optim.lr_scheduler.LRScheduler:
    """dfdet.py:636-647 (cosine) and GenD.py:321-347 (cyclic + warmup), with torch's own schedulers."""
    if cfg.lr_schedule == "cosine":
        sched: optim.lr_scheduler.LRScheduler = optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=cfg.epochs * steps_per_epoch, eta_min=cfg.lr_min
        )
    else:
        sched = optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=int((cfg.restart_epochs or 0) * steps_per_epoch), T_mult=1, eta_min=cfg.lr_min
        )
    if cfg.warmup_epochs > 0:
        warm_steps = int(cfg.warmup_epochs * steps_per_epoch)
        warm = optim.lr_scheduler.LinearLR(opt, start_factor=cfg.lr_min / cfg.lr, total_iters=warm_steps)
        sched = optim.lr_scheduler.SequentialLR(opt, [warm, sched], milestones=[warm_steps])
    return sched


# -- the recipe files themselves ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_value_cites_a_reference_line(name: str) -> None:
    recipe = RECIPES[name]
    assert set(recipe.settings) == set(HYPER_PARAMETERS)
    for key, setting in recipe.settings.items():
        assert re.match(r"yermandy/(deepfake-detection@0b872f7|GenD@e03532d) ", setting.source), (key, setting)
        assert re.search(r"\.(py|sh)(:\d+)?", setting.source) or "unused" in setting.source, (key, setting)


def test_fit_defaults_are_the_paper_recipe_and_from_recipe_switches() -> None:
    default = FitConfig(data=Path("d"), out=Path("o"))
    assert default.recipe == "paper" and default.hyper_parameters() == PAPER.values()
    gend = FitConfig.from_recipe("gend", Path("d"), Path("o"), lr=1e-3)
    assert gend.recipe == "gend" and gend.lr == 1e-3
    assert {k: v for k, v in gend.hyper_parameters().items() if k != "lr"} == {
        k: v for k, v in GEND_MAIN.values().items() if k != "lr"
    }
    # the table of the issue, read from the recipe files
    p, g = PAPER.values(), GEND_MAIN.values()
    assert (p["ce_weight"], p["uniformity_weight"], p["alignment_weight"]) == (1.0, 0.0, 0.0)
    assert (g["ce_weight"], g["uniformity_weight"], g["alignment_weight"]) == (1.0, 0.5, 0.1)
    assert (p["slerp"], p["blur_p"], p["blur_kernel"]) == (True, 1.0, (3, 7))
    assert (g["blur_p"], g["blur_kernel"]) == (0.1, (7, 7))
    assert p["select_by"] == g["select_by"] == "val_video_map"


def test_real_architectures_default_to_the_openai_weights() -> None:
    assert [default_weights(a) for a in ("ViT-L-14", "ViT-B-16", "ViT-B-32")] == ["openai"] * 3
    assert default_weights("tiny") == "random-init"


# -- one optimisation step ------------------------------------------------------------------------------


def tiny_data(root: Path, n: int = 10) -> Path:
    rng = np.random.default_rng(0)
    recs = []
    for k in range(n):
        rel = f"crops/v{k}/0.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        recs.append(CropRecord(rel, k % 2, f"v{k}", "synthetic", 0, "train"))
    write_manifest(root, recs)
    return root


@pytest.mark.parametrize("name", ["paper", "gend"])
def test_one_step_matches_the_reference_equations(name: str, tmp_path: Path) -> None:
    cfg = FitConfig.from_recipe(
        name, tiny_data(tmp_path / "data"), tmp_path / "run", arch="tiny", batch_size=10, device="cpu", progress=False
    )
    trainer = Trainer(cfg)
    reference = copy.deepcopy(trainer.detector)
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (10, 3, 224, 224), dtype=np.uint8))
    labels = torch.tensor([0, 1, 1, 0, 1, 1, 0, 1, 0, 1])

    before = copy.deepcopy(trainer.detector.trainable_state_dict())
    parts = trainer._train_step(images, labels)  # the real fit step (step 0)

    # the reference step on the same starting parameters
    reference.train()
    opt = optim.AdamW(ref_param_groups(reference, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    sched = ref_scheduler(cfg, opt, trainer.steps_per_epoch)
    feats = reference.features(normalise(images.permute(0, 2, 3, 1)))
    if cfg.slerp:
        gen = torch.Generator().manual_seed(sample_seed(cfg.seed, -1, 0))
        feats = ref_slerp_feature_augmentation(feats, labels, gen, cfg.slerp_range)
    emb = F.normalize(feats, p=2, dim=1)  # LinearNorm / NLinear head: head/head.py
    logits = reference.head(emb)
    loss = ref_loss(cfg, logits, labels, emb)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()

    assert parts["total"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert ("uniformity" in parts) == (name == "gend")
    got = trainer.detector.trainable_state_dict()
    want = reference.trainable_state_dict()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-7)
    assert not torch.equal(got["head.weight"], before["head.weight"])  # the step did move the parameters
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(sched.get_last_lr()[0], rel=1e-9)


@pytest.mark.parametrize("name", ["paper", "gend"])
def test_lr_schedule_matches_the_reference_schedulers_over_a_whole_run(name: str) -> None:
    steps_per_epoch = 3
    cfg = FitConfig.from_recipe(name, Path("d"), Path("o"))
    opt = optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = ref_scheduler(cfg, opt, steps_per_epoch)
    for step in range(cfg.epochs * steps_per_epoch):
        assert cfg.lr * lr_factor(step, cfg, steps_per_epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


# -- augmentations -------------------------------------------------------------------------------------------


def reference_augmentations(cfg: FitConfig) -> v2.Compose:
    """deepfake-detection src/dataset/base.py:69-78 or GenD src/dataset/augmentations.py:6-69, without the
    final JPEG (dfmod re-encodes with OpenCV's libjpeg; tested in test_data.py)."""
    blur = v2.GaussianBlur(kernel_size=list(cfg.blur_kernel), sigma=list(cfg.blur_sigma))
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomAffine(degrees=10, translate=[0.1, 0.1], scale=[0.9, 1.1]),
            blur if cfg.recipe == "paper" else v2.RandomApply([blur], p=0.1),
            v2.ColorJitter(brightness=0.1, contrast=0.1),
        ]
    )


@pytest.mark.parametrize("name", ["paper", "gend"])
def test_augmentation_chain_draws_like_the_reference(name: str) -> None:
    cfg = FitConfig.from_recipe(name, Path("d"), Path("o"), jpeg_quality=(100, 100))  # JPEG off on both sides
    ours, ref = build_train_pipeline(cfg.augment_settings()), reference_augmentations(cfg)
    img = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (3, 224, 224), dtype=np.uint8))
    outputs = []
    for seed in range(12):
        torch.manual_seed(seed)
        a = ours(img)
        torch.manual_seed(seed)
        b = ref(img)
        assert torch.equal(a, b), seed
        outputs.append(a)
    assert not torch.equal(outputs[0], outputs[1])  # the draws differ per seed: the chain is not a no-op


def test_paper_blur_is_one_3_wide_7_high_kernel_on_every_image() -> None:
    cfg = FitConfig.from_recipe("paper", Path("d"), Path("o"))
    blur = next(m for m in build_train_pipeline(cfg.augment_settings()).transforms if isinstance(m, v2.GaussianBlur))
    assert list(blur.kernel_size) == [3, 7]
    delta = torch.zeros(1, 31, 31)
    delta[0, 15, 15] = 1.0
    for _ in range(5):
        out = blur(delta)[0]
        cols, rows = torch.nonzero(out.sum(0) > 0).flatten(), torch.nonzero(out.sum(1) > 0).flatten()
        assert (int(cols.max() - cols.min()) + 1, int(rows.max() - rows.min()) + 1) == (3, 7)  # (width, height)
    gend = FitConfig.from_recipe("gend", Path("d"), Path("o"))
    applied = [m for m in build_train_pipeline(gend.augment_settings()).transforms if isinstance(m, v2.RandomApply)]
    assert len(applied) == 1 and applied[0].p == 0.1 and list(applied[0].transforms[0].kernel_size) == [7, 7]


# -- released checkpoints' hyper-parameters ------------------------------------------------------------------


def dfdet_hparams() -> dict:
    """What deepfake-detection's run.py --train records (Config.model_dump(), src/config.py:83-145)."""
    return {
        "run_name": "example-run",
        "seed": 42,
        "num_classes": 2,
        "backbone": "openai/clip-vit-large-patch14",
        "head": "LinearNorm",
        "peft": {"enabled": True, "ln_tuning": {"enabled": True}},
        "slerp_feature_augmentation": True,
        "slerp_feature_augmentation_range": [0.0, 1.0],
        "lr": 8e-5,
        "min_lr": 5e-5,
        "lr_scheduler": "cosine",
        "weight_decay": 0,
        "betas": [0.9, 0.999],
        "loss": {"ce_labels": 1.0, "label_smoothing": 0.0, "bce_labels": 0.0, "uniformity": 0.0, "alignment_labels": 0},
        "max_epochs": 10,
        "batch_size": 128,
        "mini_batch_size": 128,
        "precision": "bf16-mixed",
        "checkpoint_for_testing": "best_mAP",
    }


def gend_hparams() -> dict:
    """GenD's wacv-LN+L2+UnAl-seed0 Config dump (src/config.py:140-212)."""
    return {
        "seed": 0,
        "backbone": "openai/clip-vit-large-patch14",
        "head": "LinearNorm",
        "augmentations": {
            "random_horizontal_flip": 0.5,
            "random_affine_degrees": 10,
            "random_affine_translate": [0.1, 0.1],
            "random_affine_scale": [0.9, 1.1],
            "gaussian_blur_prob": 0.1,
            "gaussian_blur_kernel_size": 7,
            "gaussian_blur_sigma": [0.1, 2.0],
            "color_jitter_brightness": 0.1,
            "color_jitter_contrast": 0.1,
            "jpeg_quality": [40, 100],
            "resize": None,
            "gaussian_noise_sigma": 0.0,
        },
        "lr": 3e-4,
        "min_lr": 1e-5,
        "lr_scheduler": "cyclic",
        "warmup_epochs": 1,
        "num_epochs_in_cycle": 10,
        "optimizer": "AdamW",
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "loss": {"ce_labels": 1.0, "label_smoothing": 0.0, "uniformity": 0.5, "alignment_labels": 0.1},
        "max_epochs": 30,
        "batch_size": 128,
        "mini_batch_size": 128,
        "precision": "bf16-mixed",
        "early_stopping_patience": 30,
        "monitor_metric": "val/mAP_video",
        "monitor_metric_mode": "max",
    }


def test_a_released_runs_hyper_parameters_map_onto_its_recipe() -> None:
    paper = recipe_from_hparams(dfdet_hparams(), "model.ckpt")
    assert paper.name == "imported:paper" and paper.values() == PAPER.values()
    gend = recipe_from_hparams(gend_hparams(), "model.ckpt")
    assert gend.name == "imported:gend" and gend.values() == GEND_MAIN.values()
    assert gend.sources()["lr"] == "model.ckpt hyper_parameters"
    assert gend.sources()["slerp"] == GEND_MAIN.sources()["slerp"]  # unrecorded: the base recipe's source


def test_hparams_mapping_is_field_by_field_and_refuses_what_it_cannot_reproduce() -> None:
    got = settings_from_hparams({"lr": 1e-3, "loss": {"uniformity": 2.0}, "augmentations": None})
    assert got == {"lr": 1e-3, "uniformity_weight": 2.0, "augment": False}
    with pytest.raises(ValueError, match="optimizer"):
        settings_from_hparams({"optimizer": "SGD"})
    with pytest.raises(ValueError, match="lr_scheduler"):
        settings_from_hparams({"lr_scheduler": "step"})
    with pytest.raises(ValueError, match="monitor_metric"):
        settings_from_hparams({"monitor_metric": "val/loss", "monitor_metric_mode": "min"})
