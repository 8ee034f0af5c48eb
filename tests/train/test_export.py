"""Export to a Triton model repository (train/export.py) and the python-backend template it installs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from train import export
from train.checkpoint import save_checkpoint
from train.export import MODEL_NAME, ExportReport, ParityError, export_repository, render_config
from train.factory import create_model
from train.model import DeepfakeDetector, ServingModel
from worker.core.model_config import parse_parameters
from worker.core.version import PREPROCESSING_VERSION


def _faces(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)


def _parse(config_text: str) -> Any:
    """Parse with Triton's own ModelConfig proto (shipped in tritonclient), as the server does."""
    return text_format.Parse(config_text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def detector() -> DeepfakeDetector:
    return create_model("tiny", seed=4).eval()


@pytest.fixture(scope="module")
def exported(detector: DeepfakeDetector, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    out = tmp_path_factory.mktemp("repo") / "triton_models"
    return export_repository(detector, out, backend="python", version=1, threshold=0.42, uncertain_band=0.1)


def test_python_backend_repository_layout(exported: ExportReport) -> None:
    model_dir = Path(exported.model_dir)
    assert model_dir.name == MODEL_NAME
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "requirements.txt"]
    requirements = (model_dir / "requirements.txt").read_text()
    assert f"onnxruntime=={ort.__version__}" in requirements and f"numpy=={np.__version__}" in requirements
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx", "model.py"]
    assert exported.onnx_bytes == (model_dir / "1" / "model.onnx").stat().st_size > 0
    assert exported.max_abs_diff <= 1e-4
    assert exported.parity_batches == [1, 4]


def test_config_is_valid_triton_config_with_the_contract(exported: ExportReport) -> None:
    text = Path(exported.config_path).read_text()
    cfg = _parse(text)
    assert cfg.name == MODEL_NAME and cfg.backend == "python" and cfg.max_batch_size == 64
    (faces,) = cfg.input
    assert (faces.name, faces.data_type, list(faces.dims)) == ("faces", model_config_pb2.TYPE_UINT8, [224, 224, 3])
    outputs = {o.name: o for o in cfg.output}
    assert list(outputs["fake_prob"].dims) == [1] and outputs["fake_prob"].HasField("reshape")
    assert list(outputs["fake_prob"].reshape.shape) == []
    assert list(outputs["embedding"].dims) == [64]
    assert all(o.data_type == model_config_pb2.TYPE_FP32 for o in cfg.output)
    assert cfg.HasField("dynamic_batching")
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO  # --device auto
    # the worker's reader (worker.core.model_config) sees exactly what Triton's schema parses
    params = parse_parameters(text)
    assert params == {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["threshold"] == "0.42" and params["uncertain_band"] == "0.1"
    assert params["weights"] == "random-init" and params["arch"] == "tiny" and params["feature_dim"] == "64"
    assert params["preprocessing_version"] == PREPROCESSING_VERSION
    assert params["checkpoint_sha256"] == "" and params["weights_sha256"] == ""
    assert params["head_norm"] == "true"


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_runtime_matches_pytorch(exported: ExportReport, detector: DeepfakeDetector, batch: int) -> None:
    faces = _faces(batch, seed=batch)
    session = ort.InferenceSession(exported.onnx_path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["faces"]
    assert session.get_inputs()[0].type == "tensor(uint8)"
    prob, emb = session.run(["fake_prob", "embedding"], {"faces": faces})
    with torch.no_grad():
        prob_pt, emb_pt = ServingModel(detector)(torch.from_numpy(faces))
    assert prob.shape == (batch,) and emb.shape == (batch, 64)
    np.testing.assert_allclose(prob, prob_pt.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(emb, emb_pt.numpy(), rtol=0, atol=1e-4)


def test_failed_parity_writes_nothing(detector: DeepfakeDetector, tmp_path: Path) -> None:
    out = tmp_path / "triton_models"
    with pytest.raises(ParityError, match="tolerance"):
        export_repository(detector, out, tolerance=-1.0)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the staging directory is gone too


def test_second_version_with_onnxruntime_backend_keeps_the_first(
    exported: ExportReport, detector: DeepfakeDetector, tmp_path: Path
) -> None:
    out = tmp_path / "triton_models"
    shutil.copytree(Path(exported.model_dir).parent, out)
    report = export_repository(detector, out, backend="onnxruntime", version=2, tensorrt=True, device="gpu")
    model_dir = Path(report.model_dir)
    assert (model_dir / "1" / "model.onnx").exists()  # version 1 untouched
    assert sorted(p.name for p in (model_dir / "2").iterdir()) == ["model.onnx"]
    cfg = _parse((model_dir / "config.pbtxt").read_text())
    assert cfg.platform == "onnxruntime_onnx" and not cfg.backend
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    (accel,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt"


def test_execution_env_ships_a_packed_python_for_the_python_backend(
    detector: DeepfakeDetector, tmp_path: Path
) -> None:
    env = tmp_path / "dfmod-py311.tar.gz"
    env.write_bytes(b"packed")  # a conda-pack archive; Triton unpacks it, export only places it
    report = export_repository(detector, tmp_path / "repo", backend="python", execution_env=env)
    model_dir = Path(report.model_dir)
    assert (model_dir / env.name).read_bytes() == b"packed"
    params = parse_parameters((model_dir / "config.pbtxt").read_text())
    assert params["EXECUTION_ENV_PATH"] == "$$TRITON_MODEL_DIRECTORY/dfmod-py311.tar.gz"
    with pytest.raises(ValueError, match="python"):
        export_repository(detector, tmp_path / "r2", backend="onnxruntime", execution_env=env)
    assert not (tmp_path / "r2").exists()


def test_render_config_rejects_bad_combinations() -> None:
    with pytest.raises(ValueError):
        render_config(backend="python", feature_dim=8, max_batch=8, parameters={}, tensorrt=True)
    with pytest.raises(ValueError):
        render_config(backend="tensorflow", feature_dim=8, max_batch=8, parameters={})
    with pytest.raises(ValueError):
        render_config(backend="python", feature_dim=8, max_batch=0, parameters={})
    with pytest.raises(ValueError, match="GPU"):
        render_config(backend="onnxruntime", feature_dim=8, max_batch=8, parameters={}, tensorrt=True, device="cpu")
    with pytest.raises(ValueError):
        render_config(backend="onnxruntime", feature_dim=8, max_batch=8, parameters={}, device="tpu")
    text = render_config(backend="python", feature_dim=8, max_batch=8, parameters={"weights": 'a"b\\c'})
    assert _parse(text).parameters["weights"].string_value == 'a"b\\c'


def test_cli_exports_a_checkpoint_with_its_calibration(detector: DeepfakeDetector, tmp_path: Path) -> None:
    ck = tmp_path / "ck.pt"
    sha = save_checkpoint(ck, detector, {"epochs": 1}, {"threshold": 0.37, "uncertain_band": 0.05})
    parser = argparse.ArgumentParser()
    export.register(parser.add_subparsers())
    out = tmp_path / "repo"
    args = parser.parse_args(["export", "--checkpoint", str(ck), "--out", str(out), "--json"])
    assert args.func(args) == 0
    params = parse_parameters((out / MODEL_NAME / "config.pbtxt").read_text())
    assert params["threshold"] == "0.37" and params["uncertain_band"] == "0.05"
    assert params["checkpoint_sha256"] == sha and params["weights_sha256"] == sha
    args = parser.parse_args(["export", "--arch", "tiny", "--out", str(tmp_path / "r2"), "--tolerance", "-1"])
    assert args.func(args) != 0
    assert not (tmp_path / "r2").exists()


# --- the python-backend template, with a stand-in for Triton's triton_python_backend_utils -------------


class _FakeTensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _FakeResponse:
    def __init__(self, output_tensors: list[_FakeTensor], error: Any = None):
        self.output_tensors, self.error = output_tensors, error


class _FakeRequest:
    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = tensors


def _fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _FakeTensor  # type: ignore[attr-defined]
    pb.InferenceResponse = _FakeResponse  # type: ignore[attr-defined]
    pb.TritonError = lambda message: ("error", message)  # type: ignore[attr-defined]
    pb.TritonModelException = RuntimeError  # type: ignore[attr-defined]

    def get_input_tensor_by_name(request: _FakeRequest, name: str) -> _FakeTensor | None:
        return _FakeTensor(name, request.tensors[name]) if name in request.tensors else None

    pb.get_input_tensor_by_name = get_input_tensor_by_name  # type: ignore[attr-defined]
    return pb


@pytest.fixture
def python_model(exported: ExportReport, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The installed model.py, initialised the way Triton does (config as JSON, repository, version)."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    assert exported.python_model_path is not None
    spec = importlib.util.spec_from_file_location("deepfake_clip_model", exported.python_model_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToDict(
        _parse(Path(exported.config_path).read_text()), preserving_proto_field_name=True
    )
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": exported.model_dir,
            "model_version": "1",
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }
    )
    return model


def test_python_backend_serves_the_contract(python_model: Any, exported: ExportReport) -> None:
    session = ort.InferenceSession(exported.onnx_path, providers=["CPUExecutionProvider"])
    a, b = _faces(2, seed=10), _faces(3, seed=11)
    requests = [
        _FakeRequest({"faces": a}),
        _FakeRequest({"faces": np.zeros((1, 100, 100, 3), np.uint8)}),
        _FakeRequest({"faces": b}),
        _FakeRequest({}),
    ]
    responses = python_model.execute(requests)
    assert len(responses) == 4
    for faces, response in ((a, responses[0]), (b, responses[2])):
        assert response.error is None
        out = {t.name(): t.as_numpy() for t in response.output_tensors}
        prob, emb = session.run(["fake_prob", "embedding"], {"faces": faces})
        assert out["fake_prob"].shape == (len(faces), 1) and out["fake_prob"].dtype == np.float32
        assert out["embedding"].shape == (len(faces), 64)
        np.testing.assert_allclose(out["fake_prob"][:, 0], prob, rtol=0, atol=1e-6)
        np.testing.assert_allclose(out["embedding"], emb, rtol=0, atol=1e-6)
    assert responses[1].error is not None and "224" in responses[1].error[1]
    assert responses[3].error is not None and "missing" in responses[3].error[1]
    assert responses[1].output_tensors == [] and responses[3].output_tensors == []
