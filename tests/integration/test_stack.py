"""The local stack (deploy/local/stack.sh) against real servers: Kafka, Redis and Triton.

One stack in a temporary DFMOD_STACK_DIR (so it runs beside a developer's own stack) serving a throwaway
python-backend model that has the deepfake_clip contract and runs an ONNX graph through onnxruntime, which
proves the backend stub imports numpy and onnxruntime from .venv-triton. The tests run in file order:
the last one takes the stack down and checks that nothing is left running.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_SH = REPO_ROOT / "deploy" / "local" / "stack.sh"
SERVICES = ("redis", "kafka", "triton")
PORT_VARS = (
    "KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "REDIS_PORT",
    "TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT",
)
MODEL = "toy_clip"
EVENTS_PARTITIONS = 3  # not the default (4), to show KAFKA_EVENTS_PARTITIONS is honoured
EMBED_DIM = 8

MODEL_CONFIG = f"""
name: "{MODEL}"
backend: "python"
max_batch_size: 8
input [ {{ name: "faces" data_type: TYPE_UINT8 dims: [ 224, 224, 3 ] }} ]
output [
  {{ name: "fake_prob" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "embedding" data_type: TYPE_FP32 dims: [ {EMBED_DIM} ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

# fake_prob comes from an ONNX graph (mean pixel / 255) run by onnxruntime inside the stub; the embedding
# (first pixels / 255) from numpy. Both are easy to recompute here, so the test checks real values.
MODEL_PY = f'''
import os
import re

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            faces = pb_utils.get_input_tensor_by_name(request, "faces").as_numpy()
            (prob,) = self.session.run(["fake_prob"], {{"faces": faces}})
            emb = faces.reshape(faces.shape[0], -1)[:, :{EMBED_DIM}].astype(np.float32) / 255.0
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("fake_prob", prob.astype(np.float32)),
                pb_utils.Tensor("embedding", emb),
            ]))
        return responses
'''


def _write_mean_onnx(path: Path) -> None:
    """faces uint8 [N,224,224,3] -> fake_prob float [N] = mean(faces) / 255."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["faces"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Div", ["m", "scale"], ["fake_prob"]),
        ],
        "toy_mean",
        [helper.make_tensor_value_info("faces", TensorProto.UINT8, ["N", 224, 224, 3])],
        [helper.make_tensor_value_info("fake_prob", TensorProto.FLOAT, ["N"])],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [255.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # old enough for any onnxruntime the triton venv may hold
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _make_model_repository(root: Path) -> Path:
    version_dir = root / MODEL / "1"
    version_dir.mkdir(parents=True)
    (root / MODEL / "config.pbtxt").write_text(MODEL_CONFIG)
    (version_dir / "model.py").write_text(MODEL_PY)
    _write_mean_onnx(version_dir / "model.onnx")
    return root


@dataclass
class Stack:
    dir: Path
    env: dict[str, str]  # the process environment for stack.sh
    settings: dict[str, str]  # parsed $DFMOD_STACK_DIR/env

    def run(self, *args: str, timeout: float = 240.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(STACK_SH), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            pytest.fail(f"stack.sh {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def pid(self, service: str) -> int:
        return int((self.dir / service / "pid").read_text().split()[0])

    def port(self, name: str) -> int:
        return int(self.settings[name])


def _parse_env(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, ...]; None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int, start: str | None = None) -> bool:
    """Running, not a zombie (a late-reaped zombie holds no port and runs no code), and, when START is
    given, still the process that started then (not a recycled PID)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and (start is None or fields[19] == start)


def _group(pgid: int) -> dict[int, str]:
    """Live PIDs (with their start times) in process group PGID; Triton's stubs live in its group."""
    members = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members[int(entry.name)] = fields[19]
    return members


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("stack")
    env = {k: v for k, v in os.environ.items() if k not in PORT_VARS}  # ports: let `up` pick free ones
    env.update(
        DFMOD_STACK_DIR=str(base / "stack"),
        TRITON_MODEL_REPOSITORY=str(_make_model_repository(base / "models")),
        KAFKA_EVENTS_PARTITIONS=str(EVENTS_PARTITIONS),
    )
    started = Stack(dir=base / "stack", env=env, settings={})
    try:
        started.run("up")
        started.settings = _parse_env((started.dir / "env").read_text())
        yield started
    finally:
        started.run("down", check=False, timeout=120)


def test_env_file_names_the_worker_settings(stack: Stack) -> None:
    s = stack.settings
    assert s["DFMOD_KAFKA__BOOTSTRAP_SERVERS"] == f"127.0.0.1:{s['KAFKA_PORT']}"
    assert s["DFMOD_CACHE__URL"] == f"redis://127.0.0.1:{s['REDIS_PORT']}/0"
    assert s["DFMOD_TRITON__URL"] == f"127.0.0.1:{s['TRITON_GRPC_PORT']}"
    assert s["TRITON_HTTP_URL"] == f"http://127.0.0.1:{s['TRITON_HTTP_PORT']}"
    ports = [stack.port(name) for name in PORT_VARS]
    assert len(set(ports)) == len(ports), "each server needs its own port"
    for name in PORT_VARS:  # remembered, so that later calls without the variables agree
        assert (stack.dir / "ports" / name).read_text().strip() == s[name]
    assert _parse_env(stack.run("env").stdout) == s


def test_kafka_produce_consume_in_group_and_commit(stack: Stack) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    bootstrap = stack.settings["DFMOD_KAFKA__BOOTSTRAP_SERVERS"]
    group = f"test-{uuid.uuid4().hex[:8]}"
    topic = "media.events"
    keys = {uuid.uuid4().hex for _ in range(12)}

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10_000)
    try:
        for key in keys:
            producer.send(topic, key=key.encode(), value=b'{"id": "' + key.encode() + b'"}')
        producer.flush(timeout=20)
    finally:
        producer.close(timeout=5)

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", consumer_timeout_ms=1000,
    )
    try:
        assert consumer.partitions_for_topic(topic) == set(range(EVENTS_PARTITIONS))
        assert consumer.partitions_for_topic("media.verdicts") == set(range(4))
        assert consumer.partitions_for_topic("media.events.dlq") == {0}
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while not keys <= seen and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                seen.update(r.key.decode() for r in records if r.key is not None)
        assert keys <= seen
        consumer.commit()
        assignment = consumer.assignment()
        ends = consumer.end_offsets(list(assignment))
    finally:
        consumer.close()

    # A fresh member of the group reads the committed offsets back from the broker's coordinator.
    checker = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        committed = {tp: checker.committed(TopicPartition(tp.topic, tp.partition)) for tp in assignment}
    finally:
        checker.close()
    assert committed == ends
    assert sum(ends.values()) >= len(keys)


def test_redis_set_get_and_restart_alone(stack: Stack) -> None:
    import redis

    url = stack.settings["DFMOD_CACHE__URL"]
    client = redis.Redis.from_url(url, socket_timeout=2)
    client.set("dfmod:test", b"1")
    assert client.get("dfmod:test") == b"1"

    stack.run("down", "redis", timeout=60)
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
    assert _answers(stack.port("KAFKA_PORT")), "stopping redis alone must leave kafka running"
    status = stack.run("status", check=False)
    assert status.returncode != 0 and re.search(r"^redis:\s+stopped", status.stdout, re.M)

    stack.run("up", "redis", timeout=60)  # same port: remembered in the stack dir
    fresh = redis.Redis.from_url(url, socket_timeout=2)
    assert fresh.get("dfmod:test") is None  # --save '': nothing persisted across the restart
    fresh.set("dfmod:test", b"2")
    assert fresh.get("dfmod:test") == b"2"


def test_triton_serves_the_python_backend_model(stack: Stack) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(stack.settings["DFMOD_TRITON__URL"])
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    config = client.get_model_config(MODEL).config
    assert config.backend == "python" and config.HasField("dynamic_batching")

    faces = np.random.default_rng(7).integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)
    inp = grpcclient.InferInput("faces", list(faces.shape), "UINT8")
    inp.set_data_from_numpy(faces)
    outputs = [grpcclient.InferRequestedOutput("fake_prob"), grpcclient.InferRequestedOutput("embedding")]
    result = client.infer(MODEL, [inp], outputs=outputs, timeout=30)

    prob = result.as_numpy("fake_prob")
    emb = result.as_numpy("embedding")
    assert prob is not None and emb is not None
    assert prob.dtype == np.float32 and prob.shape == (3,)
    assert emb.dtype == np.float32 and emb.shape == (3, EMBED_DIM)
    np.testing.assert_allclose(prob, faces.reshape(3, -1).mean(axis=1) / 255.0, rtol=1e-5)
    np.testing.assert_allclose(emb, faces.reshape(3, -1)[:, :EMBED_DIM] / 255.0, rtol=1e-6)


def test_up_twice_is_idempotent(stack: Stack) -> None:
    before = {svc: stack.pid(svc) for svc in SERVICES}
    started = time.monotonic()
    out = stack.run("up", timeout=60)
    assert time.monotonic() - started < 20
    assert {svc: stack.pid(svc) for svc in SERVICES} == before
    assert all(_alive(pid) for pid in before.values())
    assert out.stderr.count("already running") == len(SERVICES)
    assert stack.run("status").returncode == 0


def test_down_leaves_no_process(stack: Stack) -> None:
    leaders = {svc: stack.pid(svc) for svc in SERVICES}
    processes: dict[int, str] = {}
    for pid in leaders.values():
        processes.update(_group(pid))
    assert set(leaders.values()) <= set(processes)
    assert len(_group(leaders["triton"])) >= 2, "the python-backend stub should run in triton's group"

    stack.run("down", timeout=120)

    assert not [pid for pid, start in processes.items() if _alive(pid, start)]
    assert not [svc for svc in SERVICES if (stack.dir / svc / "pid").exists()]
    assert not [name for name in PORT_VARS if _answers(stack.port(name))]
    status = stack.run("status", check=False)
    assert status.returncode != 0
    assert status.stdout.count("stopped") == len(SERVICES)
