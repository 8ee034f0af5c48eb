"""The exported model on the real Triton answers like PyTorch, through the worker's own Triton client."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.factory import create_model
from train.model import ServingModel
from worker.core.settings import TritonSettings
from worker.core.version import PREPROCESSING_VERSION
from worker.infer.base import infer_blocking
from worker.infer.triton import TritonBackend


@pytest.mark.parametrize(("scheme", "balancing"), [("", "pick_first"), ("dns:///", "round_robin")],
                         ids=["one-connection", "round-robin"])
def test_triton_matches_pytorch_and_carries_the_model_parameters(conn: dict[str, str], scheme: str,
                                                                 balancing: str) -> None:
    # The session's model repository was written by `dfmod-train export --arch tiny --weights random-init`
    # (seed 0): rebuilding the same detector here gives the reference answers.
    serving = ServingModel(create_model("tiny", "random-init", seed=0)).eval()
    rng = np.random.default_rng(7)
    faces = rng.integers(0, 256, size=(5, 224, 224, 3), dtype=np.uint8)
    with torch.no_grad():
        ref_prob, ref_emb = (t.numpy() for t in serving(torch.from_numpy(faces)))

    # round-robin: the chart's way (a name resolved to every Triton pod, channel options of our own)
    settings = TritonSettings(url=scheme + conn["DFMOD_TRITON__URL"], load_balancing=balancing)  # type: ignore[arg-type]
    backend = TritonBackend(settings)
    try:
        backend.wait_ready(60)
        info = backend.model_info()
        got = infer_blocking(backend, faces)
    finally:
        backend.close()

    assert info.name == "deepfake_clip" and info.weights == "random-init"
    assert info.preprocessing_version == PREPROCESSING_VERSION
    assert 0.0 < info.threshold < 1.0
    assert got.fake_prob.shape == (5,) and got.embedding.shape == ref_emb.shape
    np.testing.assert_allclose(got.fake_prob, ref_prob, atol=1e-4)
    np.testing.assert_allclose(got.embedding, ref_emb, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got.embedding, axis=1), 1.0, atol=1e-4)
