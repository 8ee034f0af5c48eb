"""`fit` end to end on CPU: a small learnable task, exact resumption, and what a run leaves on disk.

The task: 224x224 crops of the astronaut at random offsets plus noise; "fake" crops carry a planted
artefact (a 2-pixel checkerboard of amplitude ±20 over the crop, the kind of grid an upsampling generator
leaves). Videos are split by id, so the held-out score is on videos never seen in training.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from train import metrics, recipes_bench
from train.checkpoint import load_checkpoint, read_checkpoint
from train.data.dataset import CropDataset
from train.evaluate import evaluate, score_dataset
from train.factory import create_model
from train.fit import FitConfig, cosine_factor, epoch_batches, fit, param_groups

pytestmark = pytest.mark.usefixtures("one_thread")


def build_task(root: Path, astronaut: Path, n_videos: int = 40, frames: int = 3, seed: int = 0) -> Path:
    """Even videos real, odd fake; 60 % train, 20 % val, 20 % test by video id (the recipe bench's task)."""
    return recipes_bench.build_task(root, recipes_bench.base_image(astronaut), n_videos, frames, seed)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("task")
    build_task(root, shared_dir / "fixtures" / "astronaut.png")
    return root


def base_config(data: Path, out: Path) -> FitConfig:
    return FitConfig(
        data=data,
        out=out,
        arch="tiny",
        epochs=10,
        batch_size=24,
        lr=3e-2,
        lr_min=3e-3,
        augment=False,
        device="cpu",
        progress=False,
    )


def test_fit_learns_the_planted_artefact_on_held_out_videos(task: Path, tmp_path: Path) -> None:
    test_set = CropDataset(task, split="test")
    labels = np.asarray(test_set.labels)
    untrained = score_dataset(create_model("tiny", seed=42), test_set, "cpu", progress=False)
    assert metrics.auroc(untrained, labels) < 0.8  # the task is not solved by the initial model

    result = fit(base_config(task, tmp_path / "run"))
    assert result.steps == 10 * 3 and result.epochs_completed == 10
    assert result.best_checkpoint is not None and result.last_checkpoint.is_file()
    assert len(result.history) == 10 and result.history[-1]["loss"] < result.history[0]["loss"]

    doc = evaluate(result.last_checkpoint, task, tmp_path / "eval", split="test", device="cpu")
    m = doc["metrics"]["all"]
    print(f"held-out AUROC: frame {m['frame']['auroc']:.4f}, video {m['video']['auroc']:.4f}")
    assert m["frame"]["auroc"] > 0.95
    assert m["video"]["auroc"] > 0.95
    assert m["video"]["n"] == 8 and m["frame"]["n"] == 24
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["metrics"]["all"]["video"]["auroc"] == pytest.approx(m["video"]["auroc"])
    for png in ("roc_frame.png", "roc_video.png", "hist_frame.png", "hist_video.png"):
        assert (tmp_path / "eval" / png).stat().st_size > 1000
    assert len((tmp_path / "eval" / "frame_scores.csv").read_text().splitlines()) == 1 + 24


def test_checkpoint_holds_only_trainable_params_and_config(task: Path, tmp_path: Path) -> None:
    cfg = replace(base_config(task, tmp_path / "run"), epochs=1)
    result = fit(cfg)
    payload = read_checkpoint(result.last_checkpoint)
    detector, meta = load_checkpoint(result.last_checkpoint)
    trainable = {n for n, p in detector.named_parameters() if p.requires_grad}
    assert set(payload["state_dict"]) == trainable
    assert any(n.startswith("head.") for n in trainable) and all(n.startswith("head.") or "ln" in n for n in trainable)
    assert meta["config"]["arch"] == "tiny" and meta["config"]["lr"] == cfg.lr
    assert meta["extra"]["epoch"] == 1 and meta["extra"]["step"] == 3
    assert result.last_checkpoint.stat().st_size < 200_000  # kilobytes, not the backbone


def trainable_params(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def test_resume_gives_the_same_final_parameters(task: Path, tmp_path: Path) -> None:
    # the full recipe's moving parts: augmentation, slerp, hypersphere terms, cosine schedule
    cfg = replace(base_config(task, tmp_path / "straight"), epochs=2, batch_size=16, augment=True)
    straight = fit(cfg)
    steps_per_epoch = 5  # ceil(72 / 16)
    assert straight.steps == 2 * steps_per_epoch

    broken = replace(cfg, out=tmp_path / "broken", max_steps=3)  # stop mid epoch 1
    first = fit(broken)
    assert first.steps == 3 and first.epochs_completed == 0
    assert read_checkpoint(first.last_checkpoint)["extra"]["batch_in_epoch"] == 3
    after_three = trainable_params(first.last_checkpoint)
    second = fit(replace(broken, resume=True, max_steps=7))  # cross the epoch boundary, stop in epoch 2
    assert second.steps == 7 and second.epochs_completed == 1
    final = fit(replace(broken, resume=True, max_steps=None))
    assert final.steps == straight.steps and final.epochs_completed == 2

    a, b = trainable_params(straight.last_checkpoint), trainable_params(final.last_checkpoint)
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [h["loss"] for h in final.history] == [h["loss"] for h in straight.history]
    # and the steps after the interruption did move the parameters
    assert not all(torch.equal(a[n], after_three[n]) for n in a)


def test_resume_refuses_a_foreign_state_file(task: Path, tmp_path: Path) -> None:
    cfg = replace(base_config(task, tmp_path / "run"), epochs=1, max_steps=1)
    fit(cfg)
    state = tmp_path / "run" / read_checkpoint(tmp_path / "run" / "last.pt")["extra"]["resume_state"]
    blob = torch.load(state, weights_only=True)
    blob["step"] = 99
    torch.save(blob, state)
    with pytest.raises(ValueError, match="sha256"):
        fit(replace(cfg, resume=True, max_steps=None))


def test_schedule_groups_and_batches() -> None:
    assert cosine_factor(0, 100, 8e-5, 5e-5) == pytest.approx(1.0)
    assert cosine_factor(50, 100, 8e-5, 5e-5) * 8e-5 == pytest.approx(6.5e-5)
    assert cosine_factor(100, 100, 8e-5, 5e-5) * 8e-5 == pytest.approx(5e-5)
    assert cosine_factor(150, 100, 8e-5, 5e-5) * 8e-5 == pytest.approx(5e-5)
    detector = create_model("tiny")
    decay, no_decay = param_groups(detector, 0.01)
    assert decay["params"] == [detector.head.weight] and decay["weight_decay"] == 0.01
    assert no_decay["weight_decay"] == 0.0
    n_trainable = sum(1 for p in detector.parameters() if p.requires_grad)
    assert len(no_decay["params"]) == n_trainable - 1  # every LayerNorm weight/bias and the head bias
    b1, b2 = epoch_batches(50, 16, 42, 0), epoch_batches(50, 16, 42, 1)
    assert [len(b) for b in b1] == [16, 16, 16, 2]
    assert sorted(i for b in b1 for i in b) == list(range(50))
    assert b1 == epoch_batches(50, 16, 42, 0) and b1 != b2


def test_cli_fit_runs(task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from train.cli import main

    out = tmp_path / "cli"
    rc = main(
        [
            "fit",
            "--data",
            str(task),
            "--arch",
            "tiny",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "36",
            "--no-slerp",
            "--no-augment",
            "--device",
            "cpu",
            "--no-progress",
            "--max-steps",
            "1",
        ]
    )
    assert rc == 0
    # one start-up block before the first step: arch, weights, recipe, device, precision, crops per split/label
    stdout = capsys.readouterr().out
    assert stdout.startswith(f"fit -> {out}\n")
    block = stdout[: stdout.index("\n", stdout.index("  schedule  "))]
    for line in ("arch      tiny", "weights   random-init", "recipe    paper; set explicitly: augment=False",
                 "device    cpu, fp32", "train 72 crops (36 real, 36 fake) from 24 videos",
                 "val   24 crops (12 real, 12 fake)"):  # fmt: skip
        assert line in block, line
    meta = read_checkpoint(out / "last.pt")
    assert meta["config"]["slerp"] is False and meta["config"]["batch_size"] == 36
    # the default recipe is the paper's: CE only, blur on every image with the 3x7 kernel, best by video mAP
    assert meta["config"]["recipe"] == "paper"
    assert meta["config"]["uniformity_weight"] == 0.0 and meta["config"]["alignment_weight"] == 0.0
    assert meta["config"]["blur_p"] == 1.0 and meta["config"]["blur_kernel"] == [3, 7]
    assert meta["config"]["select_by"] == "val_video_map" and meta["config"]["weights"] == "random-init"
    run = json.loads((out / "run.json").read_text())
    assert run["recipe"] == "paper" and run["config"]["batch_size"] == 36
    assert run["sources"]["lr"].startswith("yermandy/deepfake-detection@0b872f7 run.py:110")
    assert run["sources"]["batch_size"].startswith("set explicitly")
    assert run["startup"]["crops"]["train"] == {"crops": 72, "real": 36, "fake": 36, "videos": 24}


def test_recipes_printer_lists_every_value(capsys: pytest.CaptureFixture[str]) -> None:
    from train.recipes import HYPER_PARAMETERS
    from train.recipes import main as recipes_main

    assert recipes_main(["--sources"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| setting | paper | gend |")
    for key in HYPER_PARAMETERS:
        assert f"| {key} |" in out
    assert "| blur_kernel | (3, 7) | (7, 7) |" in out and "run.py:105" in out
