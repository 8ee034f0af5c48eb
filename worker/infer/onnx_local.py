"""Inference in-process with ONNX Runtime on CPU: the serverless path of `dfmod scan`.

It reads the same Triton model repository the server would (`<model_dir>/config.pbtxt` and
`<model_dir>/<version>/model.onnx`), so a scan and a served model give the same verdict for the same
model version, threshold included.
"""

from __future__ import annotations

import concurrent.futures
import logging
from pathlib import Path

import numpy as np

from worker.core.contracts import ModelInfo
from worker.core.model_config import model_info_from_parameters, parse_config, parse_model_name, parse_parameters
from worker.core.types import Scores
from worker.infer.base import (
    INPUT_NAME,
    OUTPUT_EMBEDDING,
    OUTPUT_FAKE_PROB,
    BatchLimits,
    InferenceError,
    ScoresCallback,
    check_faces,
    deliver,
    deliver_computed,
    empty_scores,
    limits_from_config,
    scores_from_outputs,
)

log = logging.getLogger(__name__)


def latest_version(model_dir: Path) -> str:
    """Highest numeric sub-folder of `model_dir` that holds a `model.onnx` (Triton's "latest" policy)."""
    children = list(model_dir.iterdir()) if model_dir.is_dir() else []
    versions = [p.name for p in children if p.name.isdigit() and (p / "model.onnx").is_file()]
    if not versions:
        raise InferenceError(f"no <version>/model.onnx under {model_dir}")
    return max(versions, key=int)


class OnnxBackend:
    """`InferenceBackend` on an onnxruntime CPU session. `infer_async` runs on a small thread pool."""

    def __init__(
        self, model_dir: Path, version: str | None = None, workers: int = 1, intra_op_threads: int = 0
    ) -> None:
        import onnxruntime as ort  # kept out of import time of modules that never run a local model

        self.model_dir = Path(model_dir)
        self.version = version or latest_version(self.model_dir)
        path = self.model_dir / self.version / "model.onnx"
        if not path.is_file():
            raise InferenceError(f"model file not found: {path}")
        config_path = self.model_dir / "config.pbtxt"
        text = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
        if not text:
            log.warning("no config.pbtxt beside %s: default threshold 0.5, weights unknown", path)
        name = parse_model_name(text) or self.model_dir.name
        self._limits = limits_from_config(parse_config(text), max(1, workers))
        self._info = model_info_from_parameters(name, self.version, parse_parameters(text))

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads  # 0 = ONNX Runtime's default (all cores)
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise InferenceError(f"cannot load {path}: {exc}") from exc
        inputs = self._session.get_inputs()
        names = [i.name for i in inputs]
        self._input = INPUT_NAME if INPUT_NAME in names else names[0]
        outputs = {o.name: o for o in self._session.get_outputs()}
        dim = outputs[OUTPUT_EMBEDDING].shape[-1] if OUTPUT_EMBEDDING in outputs else None
        self._embedding_dim = dim if isinstance(dim, int) else 0
        missing = {OUTPUT_FAKE_PROB, OUTPUT_EMBEDDING} - set(outputs)
        if missing:
            raise InferenceError(f"{path} lacks output(s) {sorted(missing)}; it has {sorted(outputs)}")
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="onnx-infer"
        )
        self._closed = False
        log.info("onnx model %s version %s loaded from %s", name, self.version, path)

    def model_info(self) -> ModelInfo:
        return self._info

    def batch_limits(self) -> BatchLimits:
        return self._limits

    def is_ready(self) -> bool:
        return not self._closed

    def _infer_now(self, faces: np.ndarray) -> Scores:
        batch = check_faces(faces)
        if batch.shape[0] == 0:  # no session run: some exported graphs reject a zero batch
            return empty_scores(self._embedding_dim)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> Scores:
        try:
            prob, emb = self._session.run([OUTPUT_FAKE_PROB, OUTPUT_EMBEDDING], {self._input: batch})
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed: {exc}", retriable=False) from exc
        return scores_from_outputs(prob, emb, int(batch.shape[0]))

    def infer_async(self, faces: np.ndarray, callback: ScoresCallback) -> None:
        if self._closed:
            deliver(callback, None, InferenceError("ONNX backend is closed"))
            return

        try:
            self._pool.submit(deliver_computed, callback, lambda: self._infer_now(faces), "onnx inference failed")
        except RuntimeError as exc:  # the pool shut down between the check and the submit
            deliver(callback, None, InferenceError(f"ONNX backend is closed: {exc}"))

    def close(self) -> None:
        """Finish the requests already queued (their callbacks still fire), then release the pool."""
        self._closed = True
        self._pool.shutdown(wait=True)

