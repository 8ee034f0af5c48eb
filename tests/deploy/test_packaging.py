"""The wheel (and so the worker image) carries the default detector's weights and the licences."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
YUNET_SHA256 = "104ee26c71d5c270ce79a6b3dced91c91013260d29a6bf18f9296c5b8c4c2b12"


def test_wheel_ships_yunet_weights_licence_and_notice(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy, so setuptools' build/ and egg-info never land in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy2(REPO / name, src / name)
    for package in ("worker", "train"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(src)], check=True, timeout=300, capture_output=True, cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("dfmod-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        weights = zf.read("worker/faces/weights/yunet_n_dynamic.onnx")
        licence = zf.read(next(n for n in names if n.endswith("licenses/LICENSE"))).decode()
        notice = zf.read(next(n for n in names if n.endswith("licenses/NOTICE"))).decode()
    assert hashlib.sha256(weights).hexdigest() == YUNET_SHA256
    assert "Apache License" in licence and "Version 2.0" in licence
    assert "yunet_n_dynamic.onnx" in notice and "non-commercial" in notice
    onnx = [n for n in names if n.endswith(".onnx")]
    assert onnx == ["worker/faces/weights/yunet_n_dynamic.onnx"], "only YuNet ships (SCRFD: non-commercial)"


def test_image_build_contexts_let_the_licence_files_through() -> None:
    for dockerignore in (REPO / "deploy" / "docker").glob("*.dockerignore"):
        allowed = set(re.findall(r"^!(\S+?)/?$", dockerignore.read_text(), re.M))
        assert {"LICENSE", "NOTICE", "worker"} <= allowed, dockerignore.name


def test_worker_image_installs_the_haar_cascade() -> None:
    text = (REPO / "deploy" / "docker" / "worker.Dockerfile").read_text()
    assert re.search(r"apt-get install .*opencv-data", text)
    assert "DFMOD_FACES__WEIGHTS_DIR=/opt/dfmod/models \\" not in text, "the packaged weights are the default"
