"""Inference backends: local ONNX Runtime on a tiny real model; Triton's parsing and error mapping on a fake client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import InferenceServerException

from worker.core.settings import TritonSettings
from worker.core.types import Scores
from worker.infer.base import InferenceBackend, InferenceError, scores_from_outputs
from worker.infer.onnx_local import OnnxBackend
from worker.infer.triton import TritonBackend, latest_ready_version

CONFIG = """
name: "deepfake_clip"
backend: "onnxruntime"
max_batch_size: 32
input [ { name: "faces" data_type: TYPE_UINT8 dims: [ 224, 224, 3 ] } ]
output [
  { name: "fake_prob" data_type: TYPE_FP32 dims: [ ] },
  { name: "embedding" data_type: TYPE_FP32 dims: [ 3 ] }
]
dynamic_batching { }
parameters { key: "threshold" value { string_value: "0.3" } }
parameters { key: "uncertain_band" value { string_value: "0.02" } }
parameters { key: "weights" value { string_value: "test-weights" } }
parameters { key: "preprocessing_version" value { string_value: "align5-s1.3-224-rgb-v1" } }
"""


def infer_now(backend: Any, faces: np.ndarray) -> Scores:
    """One blocking request through the backend's only inference method, `infer_async`."""
    done: Future[Scores] = Future()

    def finish(scores: Scores | None, error: BaseException | None) -> None:
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(scores)  # type: ignore[arg-type]

    backend.infer_async(faces, finish)
    return done.result(timeout=30)


def tiny_model(invert: bool = False) -> onnx.ModelProto:
    """fake_prob = mean(pixels)/255 (or 1 - that), embedding = L2-normalised per-channel means."""
    nodes = [
        helper.make_node("Cast", ["faces"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x", "c255"], ["xs"]),
        helper.make_node("ReduceMean", ["xs"], ["mean" if invert else "fake_prob"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("ReduceMean", ["xs"], ["ch"], axes=[1, 2], keepdims=0),
        helper.make_node("LpNormalization", ["ch"], ["embedding"], axis=1, p=2),
    ]
    inits = [helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0])]
    if invert:
        nodes.append(helper.make_node("Sub", ["one", "mean"], ["fake_prob"]))
        inits.append(helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("faces", TensorProto.UINT8, ["N", 224, 224, 3])],
        [
            helper.make_tensor_value_info("fake_prob", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """A Triton-style repository: versions 2 (inverted) and 10 (the latest, numerically)."""
    repo = tmp_path / "deepfake_clip"
    for version, invert in (("2", True), ("10", False)):
        (repo / version).mkdir(parents=True)
        onnx.save(tiny_model(invert), str(repo / version / "model.onnx"))
    (repo / "config.pbtxt").write_text(CONFIG)
    return repo


def random_faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)


def expected(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = faces.astype(np.float64) / 255.0
    ch = x.mean(axis=(1, 2))
    return x.mean(axis=(1, 2, 3)), ch / np.linalg.norm(ch, axis=1, keepdims=True)


# -- ONNX Runtime -----------------------------------------------------------------------------------------

def test_onnx_backend_latest_version_and_parameters(model_repo: Path) -> None:
    backend = OnnxBackend(model_repo)
    assert isinstance(backend, InferenceBackend)
    info = backend.model_info()
    assert (info.name, info.version, info.weights) == ("deepfake_clip", "10", "test-weights")
    assert (info.threshold, info.uncertain_band) == (0.3, 0.02)
    assert info.preprocessing_version == "align5-s1.3-224-rgb-v1"
    faces = random_faces(5)
    faces[0] = 0
    faces[1] = 255
    scores = infer_now(backend, faces)
    prob, emb = expected(faces[2:])
    assert scores.fake_prob.dtype == np.float32 and scores.fake_prob.shape == (5,)
    assert scores.fake_prob[0] == pytest.approx(0.0) and scores.fake_prob[1] == pytest.approx(1.0)
    np.testing.assert_allclose(scores.fake_prob[2:], prob, atol=1e-5)
    np.testing.assert_allclose(scores.embedding[2:], emb, atol=1e-5)
    backend.close()


def test_onnx_backend_pinned_version(model_repo: Path) -> None:
    backend = OnnxBackend(model_repo, version="2")
    assert backend.model_info().version == "2"
    faces = random_faces(3, seed=1)
    np.testing.assert_allclose(infer_now(backend, faces).fake_prob, 1.0 - expected(faces)[0], atol=1e-5)
    backend.close()


def test_onnx_backend_async_calls_back_from_another_thread(model_repo: Path) -> None:
    backend = OnnxBackend(model_repo, workers=2)
    results: list[Future[tuple[Scores | None, BaseException | None, int]]] = [Future() for _ in range(4)]
    batches = [random_faces(n, seed=n) for n in (1, 2, 3, 4)]
    for batch, fut in zip(batches, results, strict=True):
        backend.infer_async(
            batch, lambda s, e, f=fut: f.set_result((s, e, threading.get_ident()))  # type: ignore[misc]
        )
    for batch, fut in zip(batches, results, strict=True):
        scores, error, thread_id = fut.result(timeout=30)
        assert error is None and scores is not None
        assert thread_id != threading.get_ident()
        np.testing.assert_allclose(scores.fake_prob, expected(batch)[0], atol=1e-5)
    bad: Future[BaseException | None] = Future()
    backend.infer_async(np.zeros((2, 100, 100, 3), np.uint8), lambda s, e: bad.set_result(e))
    assert isinstance(bad.result(timeout=10), InferenceError)
    backend.close()
    closed: Future[BaseException | None] = Future()
    backend.infer_async(random_faces(1), lambda s, e: closed.set_result(e))
    assert isinstance(closed.result(timeout=1), InferenceError)


def test_onnx_backend_input_checks_and_empty_batch(model_repo: Path) -> None:
    backend = OnnxBackend(model_repo)
    with pytest.raises(InferenceError):
        infer_now(backend, np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(InferenceError):
        infer_now(backend, np.zeros((224, 224, 3), np.uint8))
    empty = infer_now(backend, np.zeros((0, 224, 224, 3), np.uint8))
    assert empty.fake_prob.shape == (0,) and empty.embedding.shape == (0, 3)
    backend.close()


def test_onnx_backend_missing_model(tmp_path: Path) -> None:
    with pytest.raises(InferenceError):
        OnnxBackend(tmp_path / "nothing")
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(InferenceError):
        OnnxBackend(tmp_path / "m")


def test_onnx_backend_without_config_uses_defaults(model_repo: Path) -> None:
    (model_repo / "config.pbtxt").unlink()
    backend = OnnxBackend(model_repo)
    info = backend.model_info()
    assert (info.name, info.threshold, info.weights) == ("deepfake_clip", 0.5, "unknown")
    backend.close()


# -- output checks shared by both backends -----------------------------------------------------------------

def test_scores_from_outputs_shapes() -> None:
    emb = np.ones((3, 4), np.float32)
    assert scores_from_outputs(np.array([0.1, 0.2, 0.3]), emb, 3).fake_prob.dtype == np.float32
    np.testing.assert_allclose(scores_from_outputs(np.array([[0.1], [0.2], [0.3]]), emb, 3).fake_prob, [0.1, 0.2, 0.3])
    cases: list[tuple[np.ndarray | None, np.ndarray]] = [
        (np.zeros(2), emb), (np.zeros((3, 2)), emb), (np.zeros(3), np.zeros(3)), (None, emb)
    ]
    for prob, e in cases:
        with pytest.raises(InferenceError):
            scores_from_outputs(prob, e, 3)
    with pytest.raises(InferenceError):
        scores_from_outputs(np.array([0.1, np.nan, 0.3]), emb, 3)


# -- Triton, on a fake client ------------------------------------------------------------------------------

def triton_result(outputs: dict[str, np.ndarray]) -> InferResult:
    """A real tritonclient InferResult around a response protobuf, as the server would send."""
    response = service_pb2.ModelInferResponse(model_name="deepfake_clip", model_version="3")
    for name, arr in outputs.items():
        out = response.outputs.add()
        out.name = name
        out.datatype = "FP32"
        out.shape.extend(arr.shape)
        response.raw_output_contents.append(np.ascontiguousarray(arr, np.float32).tobytes())
    return InferResult(response)


class FakeTritonClient:
    """Just enough of tritonclient.grpc.InferenceServerClient, answering from a thread after `latency_s`."""

    def __init__(self, mode: str = "ok", latency_s: float = 0.0) -> None:
        self.mode = mode
        self.latency_s = latency_s
        self.live: bool | None = True  # None: the connection itself fails
        self.ready_versions = {"1", "3"}
        self.index: list[dict[str, str]] = [
            {"name": "deepfake_clip", "version": "1", "state": "READY"},
            {"name": "deepfake_clip", "version": "3", "state": "READY"},
            {"name": "deepfake_clip", "version": "12", "state": "UNAVAILABLE"},
            {"name": "other", "version": "40", "state": "READY"},
        ]
        self.requests: list[dict[str, Any]] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.closed = False

    def is_server_live(self, client_timeout: float | None = None) -> bool:
        if self.live is None:
            raise InferenceServerException("failed to connect to all addresses")
        return self.live

    def is_model_ready(self, name: str, version: str = "", client_timeout: float | None = None) -> bool:
        return name == "deepfake_clip" and version in self.ready_versions

    def get_model_repository_index(self, as_json: bool = False, client_timeout: float | None = None) -> Any:
        return {"models": self.index}

    def get_model_metadata(self, name: str, version: str = "", as_json: bool = False,
                           client_timeout: float | None = None) -> Any:
        return {"name": name, "versions": sorted(self.ready_versions)}

    def get_model_config(self, name: str, version: str = "", as_json: bool = False,
                         client_timeout: float | None = None) -> Any:
        assert as_json
        return {"config": {"name": name, "parameters": {
            "threshold": {"string_value": "0.35"},
            "weights": {"string_value": f"ckpt-v{version}"},
            "preprocessing_version": {"string_value": "align5-s1.3-224-rgb-v1"},
        }}}

    def async_infer(self, model_name: str, inputs: list[Any], callback: Any, model_version: str = "",
                    outputs: Any = None, client_timeout: float | None = None, **_: Any) -> None:
        if self.mode == "raise":
            raise InferenceServerException("channel closed")
        inp = inputs[0]
        faces = np.frombuffer(inp._get_content(), np.uint8).reshape(inp.shape())
        self.requests.append({
            "model": model_name, "version": model_version, "input": (inp.name(), inp.datatype(), inp.shape()),
            "outputs": [o.name() for o in outputs or []], "client_timeout": client_timeout,
        })
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

        def answer() -> None:
            time.sleep(self.latency_s)
            n = faces.shape[0]
            prob = faces[:, 0, 0, 0].astype(np.float32) / 255.0
            emb = np.tile(np.arange(4, dtype=np.float32), (n, 1))
            with self.lock:
                self.active -= 1
            if self.mode == "error":
                error = InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
                callback(result=None, error=error)
            elif self.mode == "2d":
                callback(result=triton_result({"fake_prob": prob[:, None], "embedding": emb}), error=None)
            elif self.mode == "missing":
                callback(result=triton_result({"fake_prob": prob}), error=None)
            elif self.mode == "short":
                callback(result=triton_result({"fake_prob": prob[:-1], "embedding": emb[:-1]}), error=None)
            else:
                callback(result=triton_result({"fake_prob": prob, "embedding": emb}), error=None)

        threading.Thread(target=answer, daemon=True).start()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def settings() -> Iterator[TritonSettings]:
    yield TritonSettings(url="fake:8001", max_in_flight=2, timeout_s=5.0)


def faces_with_probs(probs: list[int]) -> np.ndarray:
    faces = np.zeros((len(probs), 224, 224, 3), np.uint8)
    faces[:, 0, 0, 0] = probs
    return faces


def test_triton_start_up_resolves_latest_ready_version_and_reads_parameters(settings: TritonSettings) -> None:
    client = FakeTritonClient()
    backend = TritonBackend(settings, client=client)
    backend.wait_ready(timeout_s=1.0)
    info = backend.model_info()
    assert (info.name, info.version, info.weights, info.threshold) == ("deepfake_clip", "3", "ckpt-v3", 0.35)
    assert backend.is_ready()
    client.live = False
    assert not backend.is_ready()
    client.live = None  # the connection itself fails
    assert not backend.is_ready()


def test_triton_configured_version_and_metadata_fallback(settings: TritonSettings) -> None:
    pinned = TritonBackend(settings.model_copy(update={"model_version": "1"}), client=FakeTritonClient())
    assert pinned.model_info().version == "1"
    client = FakeTritonClient()
    client.get_model_repository_index = None  # type: ignore[assignment,method-assign]  # calling it raises
    assert TritonBackend(settings, client=client).model_info().version == "3"
    index = {"models": [
        {"name": "m", "version": "9", "state": "READY"},
        {"name": "m", "version": "10", "state": "READY"},   # numerically highest, not lexically
        {"name": "m", "version": "11"},                      # listed, not loaded
    ]}
    assert latest_ready_version(index, "m") == "10"


def test_triton_wait_ready_times_out(settings: TritonSettings) -> None:
    client = FakeTritonClient()
    client.ready_versions = set()
    client.index = []
    backend = TritonBackend(settings, client=client)
    start = time.monotonic()
    with pytest.raises(InferenceError, match="not ready"):
        backend.wait_ready(timeout_s=0.3)
    assert time.monotonic() - start < 2.0


def test_triton_infer_sends_the_contract_and_parses_answers(settings: TritonSettings) -> None:
    client = FakeTritonClient()
    backend = TritonBackend(settings, client=client)
    backend.wait_ready(timeout_s=1.0)
    scores = infer_now(backend, faces_with_probs([0, 51, 255]))
    np.testing.assert_allclose(scores.fake_prob, [0.0, 0.2, 1.0], atol=1e-6)
    assert scores.embedding.shape == (3, 4)
    req = client.requests[-1]
    assert req["model"] == "deepfake_clip" and req["version"] == "3"
    assert req["input"] == ("faces", "UINT8", [3, 224, 224, 3])
    assert req["outputs"] == ["fake_prob", "embedding"]
    assert req["client_timeout"] == 5.0
    client.mode = "2d"
    np.testing.assert_allclose(infer_now(backend, faces_with_probs([102])).fake_prob, [0.4], atol=1e-6)
    backend.close()
    assert client.closed


@pytest.mark.parametrize("mode", ["error", "missing", "short", "raise"])
def test_triton_errors_become_inference_errors_in_the_callback(settings: TritonSettings, mode: str) -> None:
    client = FakeTritonClient(mode=mode)
    backend = TritonBackend(settings, client=client)
    got: Future[tuple[Scores | None, BaseException | None]] = Future()
    backend.infer_async(faces_with_probs([1, 2]), lambda s, e: got.set_result((s, e)))
    scores, error = got.result(timeout=5)
    assert scores is None and isinstance(error, InferenceError)
    with pytest.raises(InferenceError):
        infer_now(backend, faces_with_probs([3]))
    # The slot of a failed request is released: as many further requests as slots still go out.
    for _ in range(settings.max_in_flight + 1):
        done: Future[BaseException | None] = Future()
        backend.infer_async(faces_with_probs([4]), lambda s, e, d=done: d.set_result(e))  # type: ignore[misc]
        assert isinstance(done.result(timeout=5), InferenceError)


def test_triton_bad_input_goes_to_the_callback(settings: TritonSettings) -> None:
    client = FakeTritonClient()
    backend = TritonBackend(settings, client=client)
    got: Future[BaseException | None] = Future()
    backend.infer_async(np.zeros((1, 224, 224, 3), np.float32), lambda s, e: got.set_result(e))
    assert isinstance(got.result(timeout=1), InferenceError)
    assert client.requests == []


def test_triton_in_flight_is_bounded(settings: TritonSettings) -> None:
    client = FakeTritonClient(latency_s=0.05)
    backend = TritonBackend(settings, client=client)
    futures: list[Future[Scores]] = []
    for i in range(8):
        fut: Future[Scores] = Future()
        futures.append(fut)
        backend.infer_async(faces_with_probs([i]), lambda s, e, f=fut: f.set_result(s))  # type: ignore[misc]
    results = [f.result(timeout=10) for f in futures]
    assert [r.fake_prob[0] for r in results] == pytest.approx([i / 255 for i in range(8)])
    assert client.max_active == settings.max_in_flight
