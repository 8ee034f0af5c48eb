"""A released detector end to end: hub id (offline cache) -> `dfmod-train import` -> `export` -> a real Triton
-> a worker -> verdicts whose `model` names the release and its hash; other weights under the same Triton
version miss the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import Stack, Topics, collect, produce

from train.model import normalise
from train.released import standins
from worker.core.settings import TritonSettings
from worker.infer.base import infer_blocking
from worker.infer.triton import TritonBackend

from . import media
from .conftest import REPO, WorkerFactory

HUB_ID = "yermandy/GenD_CLIP_L_14"
COMMIT = "c0ffee00" * 5
TINY = "dfmod/clip-vit-tiny"


def _cli(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "train.cli", *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[tuple[Stack, Path]]:
    """A second Triton (its own stack dir and ports) serving this test's repository; Kafka/Redis are the session's."""
    repo = tmp_path / "triton_models"
    repo.mkdir()
    stack = Stack(stack_dir=tmp_path / "stack", model_repo=repo)
    try:
        yield stack, repo
    finally:
        stack.down("triton")


def _unique_portrait(shared_dir: Path) -> bytes:
    """The suite's portrait with one random pixel: bytes no other test sent to the session's Redis."""
    from worker.cli.demo_media import encode_image, load_rgb

    rgb = load_rgb(shared_dir / "fixtures" / "astronaut.png").copy()
    rgb[0, 0] = np.random.default_rng().integers(0, 256, 3, dtype=np.uint8)
    return encode_image(rgb, fmt="png")


def _verdict(bootstrap: str, topics: Topics, blob: bytes) -> dict:
    event_id, key, value = media.event(blob)
    produce(bootstrap, topics.events, [(key, value)])
    (record,) = [r for r in collect(bootstrap, topics.verdicts, {event_id}, timeout_s=120) if r["id"] == event_id]
    return dict(record["data"])


def test_imported_release_is_served_with_its_provenance(
    tmp_path: Path, own_triton: tuple[Stack, Path], bootstrap: str, topics: Topics, start_worker: WorkerFactory,
    shared_dir: Path,
) -> None:
    stack, repo = own_triton
    # the release, as the hub cache holds it
    module = standins.gend_module("tiny", head_norm=False, seed=11)
    folder = standins.save_gend_folder(module, tmp_path / "release", TINY, head_norm=False)
    cache = tmp_path / "hf-cache"
    standins.hub_cache_layout(
        cache, HUB_ID, {"config.json": folder / "config.json", "model.safetensors": folder / "model.safetensors"},
        COMMIT,
    )
    imported = tmp_path / "gend.pt"
    report = json.loads(_cli("import", HUB_ID, "--out", str(imported), "--json",
                             env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}))
    _cli("export", "--checkpoint", str(imported), "--out", str(repo), "--backend", "python")
    triton_url = stack.up("triton")["DFMOD_TRITON__URL"]

    # Triton answers like the authors' forward
    faces = np.random.default_rng(5).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    reference = torch.softmax(standins.reference_logits(module, normalise(torch.from_numpy(faces))), -1)[:, 1]
    backend = TritonBackend(TritonSettings(url=triton_url))
    try:
        backend.wait_ready(120)
        info = backend.model_info()
        served = infer_blocking(backend, faces)
    finally:
        backend.close()
    assert float(np.abs(served.fake_prob - reference.numpy()).max()) < 1e-4
    assert info.weights == f"{HUB_ID}@{COMMIT}" and info.weights_sha256 == report["sha256"]
    assert info.threshold == 0.5  # the authors' rule, not calibrated here

    # a media event -> a verdict naming the release
    worker = start_worker(DFMOD_TRITON__URL=triton_url)
    png = _unique_portrait(shared_dir)
    first = _verdict(bootstrap, topics, png)
    assert first["status"] == "ok" and first["cached"] is False
    assert first["model"]["weights"] == f"{HUB_ID}@{COMMIT}"
    assert first["model"]["weights_sha256"] == report["sha256"]
    assert _verdict(bootstrap, topics, png)["cached"] is True

    # other weights exported under the same version: the same bytes must not hit the old verdict
    other = standins.gend_module("tiny", head_norm=False, seed=12)
    other_folder = standins.save_gend_folder(other, tmp_path / "release2" / "GenD_tiny", TINY, head_norm=False)
    other_ckpt = tmp_path / "gend2.pt"
    other_report = json.loads(_cli("import", str(other_folder), "--out", str(other_ckpt), "--json"))
    _cli("export", "--checkpoint", str(other_ckpt), "--out", str(repo), "--backend", "python", "--version", "1")
    worker.stop()
    stack.down("triton")
    triton_url = stack.up("triton")["DFMOD_TRITON__URL"]  # Triton loads the repository at start
    start_worker(DFMOD_TRITON__URL=triton_url)
    again = _verdict(bootstrap, topics, png)
    assert again["status"] == "ok" and again["cached"] is False
    assert again["model"]["version"] == first["model"]["version"]
    assert again["model"]["weights"] == "GenD_tiny"
    assert again["model"]["weights_sha256"] == other_report["sha256"] != report["sha256"]
