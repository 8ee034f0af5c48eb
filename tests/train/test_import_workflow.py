"""An imported release through the rest of the workflow as it is: `calibrate`, `evaluate`, `export --checkpoint`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from train.checkpoint import read_checkpoint
from train.cli import main
from train.data.manifest import CropRecord, write_manifest
from train.evaluate import evaluate
from train.released import standins
from train.released.command import import_release
from worker.core.model_config import MODEL_NAME, parse_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """24 validation videos (2 frames each) of smooth random images."""
    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    records = []
    for v in range(24):
        for f in range(2):
            img = cv2.resize(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8), (224, 224), interpolation=cv2.INTER_CUBIC)
            rel = f"crops/{v}/{f}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / rel), img)
            records.append(CropRecord(rel, v % 2, f"vid{v}", "noise", f, "val"))
    write_manifest(root, records)
    return root


def test_calibrate_evaluate_export_keep_the_import(tmp_path: Path, data: Path) -> None:
    module = standins.gend_module("tiny", head_norm=False, seed=7)
    folder = standins.save_gend_folder(module, tmp_path / "GenD_tiny", "dfmod/clip-vit-tiny", head_norm=False)
    imported = tmp_path / "imported.pt"
    report = import_release(str(folder), imported)
    before = read_checkpoint(imported)

    out = tmp_path / "calibrated.pt"
    args = ["calibrate", "--checkpoint", str(imported), "--data", str(data), "--split", "val", "--target-fpr", "0.25"]
    assert main([*args, "--out", str(out), "--device", "cpu"]) == 0
    after = read_checkpoint(out)
    assert after["imported"] == before["imported"] and after["imported"]["sha256"] == report.sha256
    assert after["state_dict_scope"] == "full" and after["head_norm"] is False and after["weights"] == "GenD_tiny"
    threshold = after["extra"]["threshold"]
    assert threshold != 0.5 and after["extra"]["calibration"]

    doc = evaluate(out, data, tmp_path / "eval", split="val", device="cpu", plots=False)
    assert doc["threshold"] == threshold and doc["threshold_source"] == "checkpoint"

    repo = tmp_path / "repo"
    assert main(["export", "--checkpoint", str(out), "--out", str(repo), "--backend", "python"]) == 0
    params = parse_parameters((repo / MODEL_NAME / "config.pbtxt").read_text())
    assert params["threshold"] == repr(float(threshold)) and params["weights"] == "GenD_tiny"
    assert params["weights_sha256"] == report.sha256 and params["head_norm"] == "false"
