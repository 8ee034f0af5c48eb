"""`dfmod scan`: the same pipeline in-process on ONNX Runtime, no servers; run through the real CLI.

The subprocesses get no DFMOD_FACES__WEIGHTS_DIR: the detector's weights come from the package itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train.export import export_repository
from train.factory import create_model
from train.model import ServingModel
from worker.cli.demo_media import corrupt, load_rgb, pan_zoom_video
from worker.cli.scan import ScanExit, UsageError, collect_paths, exit_code, table_header, table_row
from worker.core.contracts import ErrorInfo, Verdict, VerdictData
from worker.core.errors import ErrorCode
from worker.core.model_config import config_text, parse_config
from worker.core.settings import FaceSettings
from worker.core.types import Frame
from worker.faces.extract import extract_faces
from worker.faces.factory import create_detector

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[3]
ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random-init export (threshold 0.4), and copies whose threshold makes every face fake or real."""
    root = tmp_path_factory.mktemp("scan-models")
    export_repository(create_model("tiny", "random-init", seed=3), root / "t04", backend="onnxruntime",
                      threshold=0.4)
    dirs = {"t04": root / "t04" / "deepfake_clip"}
    for name, threshold in (("all_fake", "0.0"), ("all_real", "1.0")):
        shutil.copytree(root / "t04", root / name)
        config = root / name / "deepfake_clip" / "config.pbtxt"
        parsed = parse_config(config.read_text())  # Triton's own schema, as the exporter writes it
        assert "threshold" in parsed.parameters, "the exported config no longer carries the threshold"
        parsed.parameters["threshold"].string_value = threshold
        config.write_text(config_text(parsed))
        dirs[name] = root / name / "deepfake_clip"
    return dirs


def dfmod_scan(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "dfmod"), "scan", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=ENV, check=False)


def table(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    assert lines[0].split() == ["file", "status", "label", "score", "faces", "ms"]
    return [line.split() for line in lines[1:]]


def test_json_prints_one_verdict_per_file_matching_pytorch(
    tmp_path: Path, shared_dir: Path, model_dirs: dict[str, Path]
) -> None:
    still = shared_dir / "fixtures" / "astronaut.png"
    video = tmp_path / "clip.mp4"
    video.write_bytes(pan_zoom_video(load_rgb(still), seconds=3.0, fps=15))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(corrupt(video.read_bytes()))
    text = tmp_path / "notes.txt"
    text.write_text("not media")

    done = dfmod_scan(still, video, broken, text, "--json", "--model-dir", model_dirs["t04"])
    verdicts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [v["id"] for v in verdicts] == [str(p.resolve()) for p in (still, video, broken, text)]
    s, v, b, t = (x["data"] for x in verdicts)
    assert s["status"] == v["status"] == "ok"
    assert s["threshold"] == 0.4 and s["model"]["weights"] == "random-init"
    assert v["frames_sampled"] == 32
    assert b["error"]["code"] == "decode_failed" and t["error"]["code"] == "unsupported_media"
    flagged = any(x["label"] == "fake" for x in (s, v))
    assert done.returncode == (ScanExit.FAKE if flagged else ScanExit.USAGE), done.stderr

    # The still's score is what PyTorch says for the worker's own crop of it.
    settings = FaceSettings(weights_dir=shared_dir / "models")
    crops = extract_faces([Frame(0, 0.0, load_rgb(still))], create_detector(settings), settings)
    detector = create_model("tiny", "random-init", seed=3)
    with torch.no_grad():
        prob, _ = ServingModel(detector.eval())(torch.from_numpy(np.stack([c.crop for c in crops])))
    assert abs(s["score"] - float(prob.max())) < 1e-4


def test_table_by_default_and_exit_codes_follow_the_labels(
    tmp_path: Path, shared_dir: Path, model_dirs: dict[str, Path]
) -> None:
    still = shared_dir / "fixtures" / "astronaut.png"
    fake = dfmod_scan(still, "--model-dir", model_dirs["all_fake"])
    assert fake.returncode == ScanExit.FAKE, fake.stderr
    (row,) = table(fake.stdout)
    assert row[0] == str(still) and row[1:3] == ["ok", "fake"] and row[4] == "1" and float(row[5]) > 0
    assert "random-init weights" in fake.stderr and "mean nothing" in fake.stderr  # the banner

    real = dfmod_scan(still, "--model-dir", model_dirs["all_real"])
    assert real.returncode == ScanExit.CLEAN, real.stderr
    assert table(real.stdout)[0][1:3] == ["ok", "real"]

    broken = tmp_path / "broken.png"
    broken.write_bytes(corrupt(still.read_bytes()))
    unusable = dfmod_scan(still, broken, "--model-dir", model_dirs["all_real"])
    assert unusable.returncode == ScanExit.USAGE, unusable.stderr
    assert table(unusable.stdout)[1][1].startswith("rejected:")


def test_directories_are_walked_in_order_skipping_hidden_and_non_media(
    tmp_path: Path, shared_dir: Path, model_dirs: dict[str, Path]
) -> None:
    still = (shared_dir / "fixtures" / "astronaut.png").read_bytes()
    for name in ("b.png", "sub/a.PNG", ".hidden/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(still)
    (tmp_path / "notes.txt").write_text("not media")
    done = dfmod_scan(tmp_path, "--model-dir", model_dirs["all_real"])
    assert done.returncode == ScanExit.CLEAN, done.stderr
    assert [row[0] for row in table(done.stdout)] == [str(tmp_path / "b.png"), str(tmp_path / "sub" / "a.PNG")]


@pytest.mark.parametrize("case", ["missing path", "empty folder", "no model"])
def test_usage_and_infrastructure_errors_are_one_line(tmp_path: Path, model_dirs: dict[str, Path],
                                                      case: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    path, model, code, words = {
        "missing path": (tmp_path / "nope.png", model_dirs["t04"], ScanExit.USAGE, "no such file"),
        "empty folder": (tmp_path / "empty", model_dirs["t04"], ScanExit.USAGE, "no media files"),
        "no model": (tmp_path / "x.png", tmp_path / "models", ScanExit.INFRASTRUCTURE, "no model at"),
    }[case]
    done = dfmod_scan(path, "--model-dir", model)
    assert done.returncode == code
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("dfmod scan: error: ")
    assert words in done.stderr and "Traceback" not in done.stderr


# -- the output helpers, without a model ----------------------------------------------------------------------
def verdict(status: str, label: str | None = None, code: ErrorCode | None = None) -> Verdict:
    error = ErrorInfo(code=code, message="x") if code else None
    return Verdict(id="f", data=VerdictData(status=status, label=label, error=error))  # type: ignore[arg-type]


def test_exit_code_precedence() -> None:
    ok_real, ok_fake = verdict("ok", "real"), verdict("ok", "fake")
    rejected = verdict("rejected", code=ErrorCode.DECODE_FAILED)
    failed = verdict("error", code=ErrorCode.INFERENCE_FAILED)
    assert exit_code([ok_real, verdict("no_face"), verdict("ok", "uncertain")]) == ScanExit.CLEAN
    assert exit_code([ok_real, rejected]) == ScanExit.USAGE
    assert exit_code([rejected, failed]) == ScanExit.INFRASTRUCTURE
    assert exit_code([failed, rejected, ok_fake]) == ScanExit.FAKE  # a fake is never hidden by other outcomes


def test_table_row_shows_the_error_code_and_dashes_for_missing_values() -> None:
    row = table_row(verdict("rejected", code=ErrorCode.DECODE_FAILED), "clip.mp4", 12.4).split()
    assert row == ["clip.mp4", "rejected:decode_failed", "-", "-", "0", "12"]
    assert table_header().split() == ["file", "status", "label", "score", "faces", "ms"]


def test_unreadable_file_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"x")
    # The suite may run as root, which reads anything: let os.access answer as it would for a normal user.
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    with pytest.raises(UsageError, match=r"cannot read .*locked\.png"):
        collect_paths([tmp_path])


def test_scan_keeps_several_files_in_flight_so_batches_hold_many_files(
    tmp_path: Path, astronaut_rgb: np.ndarray, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    from worker.cli.scan import scan
    from worker.core.settings import WorkerSettings
    from worker.infer.onnx_local import OnnxBackend

    sizes: list[int] = []
    run = OnnxBackend._run

    def recording(self: OnnxBackend, batch: np.ndarray) -> object:
        sizes.append(int(batch.shape[0]))
        return run(self, batch)

    monkeypatch.setattr(OnnxBackend, "_run", recording)
    paths = []
    for i in range(12):  # one face each, different bytes
        img = astronaut_rgb.copy()
        img[0, 0] = (i, 0, 0)
        paths.append(tmp_path / f"{i:02d}.png")
        cv2.imwrite(str(paths[-1]), img[:, :, ::-1])
    settings = WorkerSettings()
    settings.batch.max_delay_ms = 200.0  # a slow machine still gathers several files per batch
    verdicts = list(scan(paths, model_dirs["t04"], settings))
    assert [v.id for v in verdicts] == [str(p.resolve()) for p in paths], "answers in the order given"
    assert all(v.data.status == "ok" and v.data.faces_count == 1 for v in verdicts)
    assert sum(sizes) == 12 and max(sizes) > 1, sizes
