"""worker/cli/startup.py on its own: error lines, failure classes, the contract check. Servers are faked here;
tests/integration/test_startup.py runs the real `dfmod worker` against the real stack for each failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from worker.cli.startup import (
    Failure,
    StartupError,
    check_detector,
    check_model,
    contract_problems,
    env_name,
    load_settings,
    wait_for_triton,
)
from worker.core.contracts import ModelInfo
from worker.core.settings import FaceSettings, TritonSettings
from worker.core.version import PREPROCESSING_VERSION

GOOD_METADATA = {
    "inputs": [{"name": "faces", "datatype": "UINT8", "shape": ["-1", "224", "224", "3"]}],
    "outputs": [{"name": "fake_prob", "datatype": "FP32", "shape": ["-1"]},
                {"name": "embedding", "datatype": "FP32", "shape": ["-1", "768"]}],
}


def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFMOD_DECODE__FRAMES", "abc")
    with pytest.raises(StartupError) as err:
        load_settings()
    assert err.value.failure is Failure.SETTINGS and err.value.exit_code == 10
    assert str(err.value).startswith("invalid setting DFMOD_DECODE__FRAMES='abc': ")
    assert "\n" not in str(err.value)


def test_broken_json_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFMOD_FETCH__ALLOW_HOSTS", "10.0.0.0/8")  # a list must be JSON
    with pytest.raises(StartupError, match=r"DFMOD_FETCH__ALLOW_HOSTS='10\.0\.0\.0/8': not valid JSON"):
        load_settings()


def test_env_name() -> None:
    assert env_name(("kafka", "bootstrap_servers")) == "DFMOD_KAFKA__BOOTSTRAP_SERVERS"
    assert env_name(("fetch", "allow_hosts", 0)) == "DFMOD_FETCH__ALLOW_HOSTS"


def test_detector_check_loads_the_packaged_weights_and_runs() -> None:
    check_detector(FaceSettings())  # the wheel's YuNet on a blank frame: no exception is the assertion


def test_missing_detector_weights_fail_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as err:
        check_detector(FaceSettings(weights_dir=tmp_path))
    assert err.value.failure is Failure.DETECTOR
    assert str(tmp_path) in str(err.value) and "DFMOD_FACES__WEIGHTS_DIR" in str(err.value)


def test_contract_holds_for_the_documented_io() -> None:
    assert contract_problems(GOOD_METADATA) == []


def test_contract_names_each_broken_tensor() -> None:
    bad = {
        "inputs": [{"name": "faces", "datatype": "FP32", "shape": ["-1", "3", "224", "224"]}],
        "outputs": [{"name": "fake_prob", "datatype": "FP16", "shape": ["-1"]}],
    }
    problems = contract_problems(bad)
    assert any("FP32, not UINT8" in p for p in problems)
    assert any("[-1, 3, 224, 224]" in p for p in problems)
    assert any("'fake_prob' is FP16" in p for p in problems)
    assert any("no output 'embedding'" in p for p in problems)


class FakeTriton:
    """Answers like tritonclient.grpc's InferenceServerClient with as_json=True."""

    def __init__(self, live: bool = True, ready: bool = True, index: list[dict[str, Any]] | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.live, self.ready, self.index = live, ready, index or []
        self.metadata = metadata or GOOD_METADATA

    def is_server_live(self, client_timeout: float) -> bool:
        if not self.live:
            raise ConnectionError("failed to connect to all addresses")
        return True

    def is_model_ready(self, name: str, version: str, client_timeout: float) -> bool:
        return self.ready

    def get_model_repository_index(self, as_json: bool, client_timeout: float) -> dict[str, Any]:
        return {"models": self.index}

    def get_model_metadata(self, name: str, version: str, as_json: bool, client_timeout: float) -> dict[str, Any]:
        return self.metadata


def fast(**kw: Any) -> TritonSettings:
    return TritonSettings(url="triton:8001", ready_timeout_s=0.2, **kw)


def test_unreachable_triton() -> None:
    with pytest.raises(StartupError) as err:
        wait_for_triton(fast(), FakeTriton(live=False))
    assert err.value.failure is Failure.TRITON_UNREACHABLE
    assert str(err.value).startswith("Triton at triton:8001 did not answer within 0.2 s: failed to connect")


def test_model_absent_from_the_repository() -> None:
    client = FakeTriton(ready=False, index=[{"name": "other", "version": "1", "state": "READY"}])
    with pytest.raises(StartupError) as err:
        wait_for_triton(fast(model_name="deepfake_clip"), client)
    assert err.value.failure is Failure.MODEL_NOT_READY
    assert "not in the model repository (it serves: other)" in str(err.value)


def test_model_that_failed_to_load_says_why() -> None:
    index = [{"name": "deepfake_clip", "version": "1", "state": "UNAVAILABLE", "reason": "onnx: bad file"}]
    with pytest.raises(StartupError, match="state UNAVAILABLE: onnx: bad file") as err:
        wait_for_triton(fast(), FakeTriton(ready=False, index=index))
    assert err.value.failure is Failure.MODEL_NOT_READY


class FakeBackend:
    def __init__(self, model: ModelInfo) -> None:
        self.model = model

    def model_info(self) -> ModelInfo:
        return self.model


def test_model_trained_on_other_crops_is_incompatible() -> None:
    model = ModelInfo(name="deepfake_clip", version="1", weights="x", preprocessing_version="align5-s1.2-v0")
    with pytest.raises(StartupError, match=r"trained on preprocessing 'align5-s1\.2-v0'") as err:
        check_model(fast(), FakeTriton(), FakeBackend(model))  # type: ignore[arg-type]
    assert err.value.failure is Failure.MODEL_INCOMPATIBLE


def test_model_with_other_io_is_incompatible() -> None:
    model = ModelInfo(name="deepfake_clip", version="1", weights="x", preprocessing_version=PREPROCESSING_VERSION)
    client = FakeTriton(metadata={"inputs": [], "outputs": GOOD_METADATA["outputs"]})
    with pytest.raises(StartupError, match="no input 'faces'") as err:
        check_model(fast(), client, FakeBackend(model))  # type: ignore[arg-type]
    assert err.value.failure is Failure.MODEL_INCOMPATIBLE
    assert check_model(fast(), FakeTriton(), FakeBackend(model)) == model  # type: ignore[arg-type]


def test_worker_cli_exits_before_any_server_on_a_bad_setting(tmp_path: Path) -> None:
    """The real CLI: a bad setting ends in one line and exit 10 (no Kafka or Triton needed to show it)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[3]),
           "DFMOD_DECODE__FRAMES": "abc"}
    done = subprocess.run([sys.executable, "-m", "worker.cli.main", "worker"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 10
    assert done.stderr.splitlines() == [
        "dfmod worker: error: invalid setting DFMOD_DECODE__FRAMES='abc': Input should be a valid integer, "
        "unable to parse string as an integer"
    ]
