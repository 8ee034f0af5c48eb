"""`calibrate`: the stored threshold meets the target FPR on the validation set, as tightly as possible."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from train import metrics
from train.calibrate import calibrate
from train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from train.data.dataset import CropDataset
from train.data.manifest import CropRecord, write_manifest
from train.evaluate import evaluate, score_dataset
from train.factory import create_detector

pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 validation videos (2 frames each) of smooth random images: scores differ from video to video."""
    root = tmp_path_factory.mktemp("cal")
    rng = np.random.default_rng(3)
    records = []
    for v in range(60):
        for f in range(2):
            small = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
            img = cv2.resize(small, (224, 224), interpolation=cv2.INTER_CUBIC)
            rel = f"crops/{v}/{f}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / rel), img)
            records.append(CropRecord(rel, v % 2, f"vid{v}", "noise", f, "val"))
    write_manifest(root, records)
    return root


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, create_detector("tiny", seed=1), {"arch": "tiny", "note": "kept"}, {"epoch": 3})
    return path


def val_scores(ckpt: Path, data: Path, level: str) -> tuple[np.ndarray, np.ndarray]:
    detector, _ = load_checkpoint(ckpt)
    ds = CropDataset(data, split="val")
    scores = score_dataset(detector, ds, "cpu", progress=False)
    labels = np.asarray(ds.labels)
    if level == "video":
        _, scores, labels = metrics.video_level(scores, labels, ds.video_ids)
    return scores, labels


@pytest.mark.parametrize(("level", "target"), [("video", 0.1), ("video", 0.3), ("frame", 0.05)])
def test_threshold_meets_target_fpr_and_is_stored(data: Path, checkpoint: Path, level: str, target: float) -> None:
    cal = calibrate(checkpoint, data, split="val", target_fpr=target, uncertain_band=0.02, level=level, device="cpu")
    payload = read_checkpoint(checkpoint)
    extra = payload["extra"]
    assert extra["threshold"] == pytest.approx(cal.threshold)
    assert extra["uncertain_band"] == 0.02
    assert extra["calibration"]["level"] == level and extra["calibration"]["target_fpr"] == target
    assert extra["epoch"] == 3 and payload["config"]["note"] == "kept"  # the rest of the checkpoint survives

    # recompute independently from the rewritten checkpoint
    scores, labels = val_scores(checkpoint, data, level)
    assert len(np.unique(scores)) > len(scores) // 2  # the scores do spread, so the choice is not trivial
    fpr, tpr = metrics.fpr_tpr_at(scores, labels, extra["threshold"])
    assert fpr <= target
    assert (fpr, tpr) == pytest.approx((cal.achieved_fpr, cal.tpr))
    below = scores[scores < extra["threshold"]]
    assert below.size and metrics.fpr_tpr_at(scores, labels, below.max())[0] > target  # tightest such threshold


def test_calibrate_cli_and_evaluate_uses_the_threshold(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    from train.cli import main

    out = tmp_path / "calibrated.pt"
    rc = main(
        [
            "calibrate",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(data),
            "--split",
            "val",
            "--target-fpr",
            "0.2",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    assert "threshold" not in read_checkpoint(checkpoint)["extra"]  # --out leaves the input alone
    threshold = read_checkpoint(out)["extra"]["threshold"]
    assert read_checkpoint(out)["extra"]["uncertain_band"] == 0.05  # the default band
    doc = evaluate(out, data, tmp_path / "eval", split="val", device="cpu", plots=False)
    assert doc["threshold"] == threshold and doc["threshold_source"] == "checkpoint"
    scores, labels = val_scores(out, data, "video")
    assert doc["metrics"]["all"]["video"]["accuracy"] == pytest.approx(metrics.accuracy_at(scores, labels, threshold))
