"""`dfmod scan`: the same pipeline in-process on ONNX Runtime, no servers; run through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from train.export import export_repository
from train.factory import create_detector
from train.model import ServingModel
from worker.faces.extract import extract_faces
from worker.faces.factory import create_detector as create_face_detector
from worker.samples import corrupt, load_rgb, pan_zoom_video
from worker.settings import FaceSettings
from worker.types import Frame

BIN = Path(sys.executable).parent


def test_scan_prints_one_verdict_per_file_matching_pytorch(tmp_path: Path, shared_dir: Path) -> None:
    detector = create_detector("tiny", "random-init", seed=3)
    export_repository(detector, tmp_path / "models", backend="onnxruntime", threshold=0.4)
    still = shared_dir / "fixtures" / "astronaut.png"
    video = tmp_path / "clip.mp4"
    video.write_bytes(pan_zoom_video(load_rgb(still), seconds=3.0, fps=15))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(corrupt(video.read_bytes()))
    text = tmp_path / "notes.txt"
    text.write_text("not media")

    done = subprocess.run(
        [str(BIN / "dfmod"), "scan", str(still), str(video), str(broken), str(text),
         "--model-dir", str(tmp_path / "models" / "deepfake_clip")],
        capture_output=True, text=True, timeout=300,
        env={"DFMOD_FACES__WEIGHTS_DIR": str(shared_dir / "models"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    verdicts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [v["id"] for v in verdicts] == [str(p.resolve()) for p in (still, video, broken, text)]
    s, v, b, t = (x["data"] for x in verdicts)
    assert s["status"] == v["status"] == "ok"
    assert s["threshold"] == 0.4 and s["model"]["weights"] == "random-init"
    assert v["frames_sampled"] == 32
    assert b["error"]["code"] == "decode_failed" and t["error"]["code"] == "unsupported_media"

    # The still's score is what PyTorch says for the worker's own crop of it.
    settings = FaceSettings(weights_dir=shared_dir / "models")
    crops = extract_faces([Frame(0, 0.0, load_rgb(still))], create_face_detector(settings), settings)
    with torch.no_grad():
        prob, _ = ServingModel(detector.eval())(torch.from_numpy(np.stack([c.crop for c in crops])))
    assert abs(s["score"] - float(prob.max())) < 1e-4
