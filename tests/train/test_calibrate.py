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
from train.factory import create_model

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
    save_checkpoint(path, create_model("tiny", seed=1), {"arch": "tiny", "note": "kept"}, {"epoch": 3})
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


def test_calibration_warns_and_records_when_val_has_too_few_reals(
    data: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.cli import main

    # 30 real videos resolve FPR steps of 1/30: enough for 0.1 (needs 10), not for 0.01 (needs 100)
    ok = calibrate(checkpoint, data, target_fpr=0.1, level="video", device="cpu", out=tmp_path / "a.pt")
    assert ok.n_real == 30 and ok.warnings == []
    low = calibrate(checkpoint, data, target_fpr=0.01, level="video", device="cpu", out=tmp_path / "b.pt")
    assert len(low.warnings) == 1 and "30 real videos" in low.warnings[0] and "at least 100" in low.warnings[0]
    assert read_checkpoint(tmp_path / "b.pt")["extra"]["calibration"]["warnings"] == low.warnings
    assert 0.0 <= low.threshold <= 1.0
    args = ["calibrate", "--checkpoint", str(checkpoint), "--data", str(data), "--device", "cpu"]
    assert main([*args, "--target-fpr", "0.01", "--out", str(tmp_path / "c.pt")]) == 0
    assert "warning: split 'val' has 30 real videos" in capsys.readouterr().err


def test_training_video_scores_follow_the_worker_rule(tmp_path: Path) -> None:
    """Two faces in one frame: the frame counts once, by its most suspicious face (worker.scoring.aggregate)."""
    from train.evaluate import by_dataset
    from worker.scoring.aggregate import media_score

    rng = np.random.default_rng(0)
    recs = []
    for k, (vid, frame) in enumerate([("a", 0), ("a", 0), ("a", 1), ("b", 0)]):
        rel = f"crops/{k}.png"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / rel), rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        recs.append(CropRecord(rel, int(vid == "b"), vid, "d", frame, "val"))
    write_manifest(tmp_path, recs)
    ds = CropDataset(tmp_path, split="val")
    scores = np.array([0.2, 0.9, 0.1, 0.7])
    video = by_dataset(scores, ds)["all"]["video"]
    assert video.scores.tolist() == [media_score([0, 0, 1], [0.2, 0.9, 0.1])[0], 0.7] == [0.5, 0.7]
    assert video.labels.tolist() == [0, 1]


def test_evaluate_names_the_split_and_counts_the_uncertain_band(
    data: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import train.plots

    titles: list[str] = []
    real_hist, real_roc = train.plots.plot_histograms, train.plots.plot_roc

    def hist(*args: object, **kwargs: object) -> Path:
        titles.append(str(kwargs["title"]))
        return real_hist(*args, **kwargs)  # type: ignore[arg-type]

    def roc(*args: object, **kwargs: object) -> Path:
        titles.append(str(kwargs["title"]))
        return real_roc(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train.plots, "plot_histograms", hist)
    monkeypatch.setattr(train.plots, "plot_roc", roc)
    cal = calibrate(checkpoint, data, target_fpr=0.2, uncertain_band=0.001, device="cpu", out=tmp_path / "c.pt")
    doc = evaluate(tmp_path / "c.pt", data, tmp_path / "eval", split=None, device="cpu")
    assert doc["split"] == "all" and len(titles) == 4
    assert all("split all" in t and "None" not in t for t in titles)
    video = doc["metrics"]["all"]["video"]
    scores, _ = val_scores(tmp_path / "c.pt", data, "video")
    expected = int(np.sum(np.abs(scores - cal.threshold) < 0.001))
    assert video["n_uncertain"] == expected == cal.n_uncertain and 0 < expected < len(scores)
    assert {"map", "eer_interp", "ap", "eer"} <= set(video) and "map" in doc["metric_definitions"]
    assert doc["training"]["config"]["note"] == "kept"  # the checkpoint's training record travels along
    assert (tmp_path / "eval" / "hist_video.png").stat().st_size > 1000


def test_export_refuses_a_threshold_outside_0_1(tmp_path: Path) -> None:
    from train.export import export_repository

    with pytest.raises(ValueError, match=r"not a probability in \[0, 1\]"):
        export_repository(create_model("tiny"), tmp_path / "repo", threshold=1.5)
    assert not (tmp_path / "repo").exists()
