"""Fixtures shared by every test package: the `shared/` folder beside the repo, and the astronaut photo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from worker.samples import load_rgb
from worker.types import RGBImage


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`$DFMOD_SHARED_DIR`, else the folder `shared` beside the repository root."""
    path = Path(os.environ.get("DFMOD_SHARED_DIR") or Path(__file__).resolve().parents[1] / ".." / "shared")
    path = path.resolve()
    if not (path / "fixtures" / "astronaut.png").is_file():
        pytest.fail(f"shared test data not found at {path}; set DFMOD_SHARED_DIR")
    return path


@pytest.fixture(scope="session")
def models_dir(shared_dir: Path) -> Path:
    """Face-detector weights (yunet_n_dynamic.onnx, scrfd_500m_bnkps.onnx)."""
    return shared_dir / "models"


@pytest.fixture(scope="session")
def astronaut_png_bytes(shared_dir: Path) -> bytes:
    """512x512 PNG with one frontal face."""
    return (shared_dir / "fixtures" / "astronaut.png").read_bytes()


@pytest.fixture(scope="session")
def astronaut_rgb(shared_dir: Path) -> RGBImage:
    """The astronaut as RGB uint8, read-only (shared by every test in the session)."""
    rgb = load_rgb(shared_dir / "fixtures" / "astronaut.png")
    rgb.setflags(write=False)
    return np.asarray(rgb)
