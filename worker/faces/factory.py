"""Builds the configured face detector (FaceSettings.backend), safe to share between worker threads.

None of the native detectors is safe to call from several threads at once (cv2.FaceDetectorYN mutates
itself in `setInputSize`), so `create_detector` wraps the backend in `ThreadLocalDetector`: each thread
lazily gets its own instance, and threads detect in parallel without a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from worker.core.settings import FaceSettings
from worker.core.types import Detection, FaceDetector, RGBImage
from worker.faces.haar import HaarDetector, cascade_candidates, require_cascade_classifier
from worker.faces.scrfd import ScrfdDetector
from worker.faces.yunet import YuNetDetector

WEIGHTS_SETTING = "DFMOD_FACES__WEIGHTS_DIR"
#: The default detector's weights ship as package data (YuNet, Apache-2.0; README.md and NOTICE there).
PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class DetectorWeightsMissing(FileNotFoundError):
    """The detector's weights file is not where the settings say."""


class ThreadLocalDetector:
    """A FaceDetector that delegates to one backend instance per calling thread."""

    def __init__(self, name: str, build: Callable[[], FaceDetector]) -> None:
        self.name = name
        self._build = build
        self._local = threading.local()
        self._local.detector = build()  # fail now, in the caller's thread, if the backend cannot load

    def _detector(self) -> FaceDetector:
        detector: FaceDetector | None = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._build()
            self._local.detector = detector
        return detector

    def detect(self, rgb: RGBImage) -> list[Detection]:
        return self._detector().detect(rgb)


def weights_dir(settings: FaceSettings) -> Path:
    """The folder the detector's weights are read from: the configured one, else the packaged one."""
    return Path(settings.weights_dir) if settings.weights_dir is not None else PACKAGED_WEIGHTS_DIR


def _weights(settings: FaceSettings, file_name: str, backend: str) -> Path:
    path = weights_dir(settings) / file_name
    if not path.is_file():
        if backend == "scrfd" and settings.weights_dir is None:
            raise DetectorWeightsMissing(
                f"scrfd weights are not shipped (insightface model terms: non-commercial research only): put "
                f"{file_name} in a folder and point {WEIGHTS_SETTING} at it, or use the yunet backend"
            )
        raise DetectorWeightsMissing(
            f"{backend} detector weights not found at {path.resolve()}: put {file_name} there or point "
            f"{WEIGHTS_SETTING} (FaceSettings.weights_dir) at the folder that holds it"
        )
    return path


def _haar_cascade(settings: FaceSettings) -> Path:
    require_cascade_classifier()  # checked first: a cascade file alone would not help
    candidates = cascade_candidates(weights_dir(settings))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DetectorWeightsMissing(
        f"haar cascade not found (looked at {', '.join(str(c) for c in candidates)}): OpenCV 5 wheels ship "
        f"none; install Debian's opencv-data (deploy/local/system-deps.sh) or put it in {WEIGHTS_SETTING}"
    )


def create_detector(settings: FaceSettings) -> FaceDetector:
    """The configured backend, ready to use from any thread."""
    build: Callable[[], FaceDetector]
    if settings.backend == "yunet":
        yunet = _weights(settings, settings.yunet_file, "yunet")
        build = lambda: YuNetDetector(yunet, settings)  # noqa: E731
    elif settings.backend == "scrfd":
        scrfd = _weights(settings, settings.scrfd_file, "scrfd")
        build = lambda: ScrfdDetector(scrfd, settings)  # noqa: E731
    elif settings.backend == "haar":
        cascade = _haar_cascade(settings)
        build = lambda: HaarDetector(cascade, settings)  # noqa: E731
    else:
        raise ValueError(f"unknown face detector backend {settings.backend!r}")
    return ThreadLocalDetector(settings.backend, build)
