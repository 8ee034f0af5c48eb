"""Fixtures shared by every test package: the repository's own assets, and optional user-supplied extras.

Everything the default tests need ships with the repository or its dependencies: the YuNet weights are
package data (worker/faces/weights) and the astronaut portrait is scikit-image's `data.astronaut()` file.
`shared_dir` assembles both into the `fixtures/` + `models/` layout the tests have always used.

Optional extras (the SCRFD weights, non-commercial, never shipped) come from `$DFMOD_SHARED_DIR`, else a
`shared` folder beside the checkout. Tests that need them carry `@pytest.mark.needs_shared`: when no such
folder exists they are deselected and the run says so in its header and summary (run
`pytest -m "not needs_shared"` to make that explicit); when the folder is given but lacks a file they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from worker.cli.demo_media import load_rgb
from worker.core.types import RGBImage
from worker.faces.factory import PACKAGED_WEIGHTS_DIR

SCRFD_FILE = "scrfd_500m_bnkps.onnx"
_REPO = Path(__file__).resolve().parents[1]


def astronaut_path() -> Path:
    """scikit-image's bundled astronaut.png (512x512, one frontal face; NASA, public domain)."""
    path = Path(str(resources.files("skimage.data") / "astronaut.png"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: the dev extra's scikit-image should ship it")
    return path


def extras_dir() -> Path | None:
    """Where optional, user-supplied test assets live, or None when this machine has none."""
    configured = os.environ.get("DFMOD_SHARED_DIR")
    if configured:
        return Path(configured).resolve()
    beside = (_REPO.parent / "shared").resolve()
    return beside if beside.is_dir() else None


def container_engine() -> str | None:
    """"docker" when its daemon answers, else "podman" when installed, else None; $DFMOD_ENGINE overrides.

    Same choice as deploy/images.sh, so the container tests run the engine that built the image.
    """
    configured = os.environ.get("DFMOD_ENGINE")
    if configured:
        return configured if configured in ("docker", "podman") and shutil.which(configured) else None
    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0:
                return "docker"
        except subprocess.TimeoutExpired:
            pass
    return "podman" if shutil.which("podman") else None


def _deselect(config: pytest.Config, items: list[pytest.Item], marker: str, key: pytest.StashKey[int]) -> None:
    dropped = [i for i in items if i.get_closest_marker(marker) is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i.get_closest_marker(marker) is None]
        config.stash[key] = len(dropped)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if extras_dir() is None:
        _deselect(config, items, "needs_shared", _DESELECTED)
    if container_engine() is None:
        _deselect(config, items, "needs_container_engine", _NO_ENGINE)


_DESELECTED = pytest.StashKey[int]()
_NO_ENGINE = pytest.StashKey[int]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    where = extras_dir()
    engine = container_engine()
    return [
        "optional extras: none (no $DFMOD_SHARED_DIR, no ../shared): needs_shared tests are deselected"
        if where is None else f"optional extras: {where} (needs_shared tests run)",
        f"container engine: {engine} (needs_container_engine tests run)" if engine
        else "container engine: none (no Docker daemon, no podman): needs_container_engine tests are deselected",
    ]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    n = config.stash.get(_DESELECTED, 0)
    if n:
        terminalreporter.write_line(
            f"{n} needs_shared test(s) deselected: the optional SCRFD weights were not supplied "
            "(set DFMOD_SHARED_DIR to a folder with models/{SCRFD_FILE})".replace("{SCRFD_FILE}", SCRFD_FILE)
        )
    n = config.stash.get(_NO_ENGINE, 0)
    if n:
        terminalreporter.write_line(
            f"{n} needs_container_engine test(s) deselected: no container engine "
            "(run deploy/images.sh engine to install podman, or start Docker)"
        )


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`fixtures/astronaut.png` and `models/` (YuNet, plus SCRFD when supplied), from the repo's own assets."""
    root = tmp_path_factory.mktemp("assets")
    (root / "fixtures").mkdir()
    (root / "models").mkdir()
    (root / "fixtures" / "astronaut.png").symlink_to(astronaut_path())
    for weights in PACKAGED_WEIGHTS_DIR.glob("*.onnx"):
        (root / "models" / weights.name).symlink_to(weights)
    extras = extras_dir()
    if extras is not None and (extras / "models" / SCRFD_FILE).is_file():
        (root / "models" / SCRFD_FILE).symlink_to(extras / "models" / SCRFD_FILE)
    return root


@pytest.fixture(scope="session")
def models_dir(shared_dir: Path) -> Path:
    """Face-detector weights: the packaged yunet_n_dynamic.onnx (and scrfd_500m_bnkps.onnx when supplied)."""
    return shared_dir / "models"


@pytest.fixture(scope="session")
def scrfd_models_dir(models_dir: Path) -> Path:
    """`models_dir`, which must hold the user-supplied SCRFD weights (use in `needs_shared` tests only)."""
    if not (models_dir / SCRFD_FILE).is_file():
        pytest.fail(f"{SCRFD_FILE} not found in {extras_dir()}/models: supply it or deselect needs_shared")
    return models_dir


@pytest.fixture(scope="session")
def astronaut_png_bytes() -> bytes:
    """512x512 PNG with one frontal face."""
    return astronaut_path().read_bytes()


@pytest.fixture(scope="session")
def astronaut_rgb() -> RGBImage:
    """The astronaut as RGB uint8, read-only (shared by every test in the session)."""
    rgb = load_rgb(astronaut_path())
    rgb.setflags(write=False)
    return np.asarray(rgb)
