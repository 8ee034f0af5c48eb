"""`dfmod worker` start-up against the real stack: each failure exits with its own code and one line, before the
worker joins its group (so no offset is ever committed), while /healthz answers from the first second."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import BIN, Stack, Topics, free_port, produce

from worker.cli.produce import inline_event
from worker.core.model_config import config_text, parse_config

from . import media


def non_json_lines(stderr: str) -> list[str]:
    """stderr minus the structured JSON log lines: what a person reads."""
    out = []
    for line in stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            out.append(line)
    return out


def committed_offsets(bootstrap: str, topics: Topics) -> dict[int, int]:
    """The group's committed offsets on the events topic, read from the coordinator (without joining)."""
    from kafka import KafkaConsumer, TopicPartition

    checker = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=topics.group, enable_auto_commit=False)
    try:
        partitions = sorted(checker.partitions_for_topic(topics.events) or [])
        assert partitions, f"topic {topics.events} not found"
        found = {p: checker.committed(TopicPartition(topics.events, p)) for p in partitions}
        return {p: off for p, off in found.items() if off is not None}
    finally:
        checker.close()


def run_worker(env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "DFMOD_HTTP_HOST": "127.0.0.1", "DFMOD_HTTP_PORT": str(free_port())}
    return subprocess.run([str(BIN / "dfmod"), "worker"], env=full, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


@pytest.fixture
def waiting_event(bootstrap: str, topics: Topics) -> Topics:
    """An event already waiting on the topic: a worker that joined its group would consume and commit it."""
    event = inline_event(media.still_png(), source="startup-test")
    produce(bootstrap, topics.events, [(event.id.encode(), event.model_dump_json().encode())])
    return topics


@pytest.fixture(scope="module")
def incompatible_triton(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Triton of its own serving deepfake_clip exported for other crops (preprocessing_version changed)."""
    repo = tmp_path_factory.mktemp("incompatible_models")
    shutil.copytree(model_repo / "deepfake_clip", repo / "deepfake_clip")
    config = repo / "deepfake_clip" / "config.pbtxt"
    parsed = parse_config(config.read_text())  # Triton's own schema, as the exporter writes it
    assert "preprocessing_version" in parsed.parameters, "the exported config no longer carries it"
    parsed.parameters["preprocessing_version"].string_value = "align5-s1.25-224-rgb-v0"
    config.write_text(config_text(parsed))
    stack = Stack(stack_dir=tmp_path_factory.mktemp("incompatible_stack"), model_repo=repo)
    try:
        yield stack.up("triton")["DFMOD_TRITON__URL"]
    finally:
        stack.down("triton")


CASES = {
    # case: (environment overrides, exit code, words of the one line)
    "bad setting": ({"DFMOD_DECODE__FRAMES": "abc"}, 10, "invalid setting DFMOD_DECODE__FRAMES='abc'"),
    "missing detector weights": ({"DFMOD_FACES__WEIGHTS_DIR": "/nonexistent/models"}, 11,
                                 "yunet detector weights not found at /nonexistent/models/yunet_n_dynamic.onnx"),
    "no Triton": ({"DFMOD_TRITON__URL": "127.0.0.1:{dead}", "DFMOD_TRITON__READY_TIMEOUT_S": "3"}, 12,
                  "Triton at 127.0.0.1:{dead} did not answer within 3 s"),
    "model not ready": ({"DFMOD_TRITON__MODEL_NAME": "no_such_model", "DFMOD_TRITON__READY_TIMEOUT_S": "3"}, 13,
                        "model no_such_model/latest on Triton at"),
    "wrong contract": ({"DFMOD_TRITON__URL": "{incompatible}"}, 14,
                       "trained on preprocessing 'align5-s1.25-224-rgb-v0'"),
    "no Kafka": ({"DFMOD_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:{dead}", "DFMOD_KAFKA__READY_TIMEOUT_S": "3"}, 15,
                 "Kafka at 127.0.0.1:{dead} did not answer within 3 s"),
    "missing topic": ({"DFMOD_KAFKA__EVENTS_TOPIC": "no.such.topic"}, 15, "has no topic no.such.topic"),
    "missing DLQ topic": ({"DFMOD_KAFKA__DLQ_TOPIC": "no.such.dlq"}, 15,
                          "has no topic no.such.dlq (create it, or check DFMOD_KAFKA__DLQ_TOPIC)"),
    "missing retry topic": ({"DFMOD_KAFKA__RETRY_TOPIC": "no.such.retry"}, 15,
                            "has no topic no.such.retry (create it, or check DFMOD_KAFKA__RETRY_TOPIC)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_start_up_failure(case: str, conn: dict[str, str], waiting_event: Topics, bootstrap: str,
                          request: pytest.FixtureRequest) -> None:
    overrides, code, words = CASES[case]
    fill = {"dead": str(free_port())}
    if case == "wrong contract":
        fill["incompatible"] = request.getfixturevalue("incompatible_triton")
    env = {**conn, **waiting_event.env(), **{k: v.format(**fill) for k, v in overrides.items()}}
    started = time.monotonic()
    done = run_worker(env)
    assert done.returncode == code, done.stderr[-3000:]
    assert non_json_lines(done.stderr) == [done.stderr.splitlines()[-1]], done.stderr[-3000:]
    line = done.stderr.splitlines()[-1]
    assert line.startswith("dfmod worker: error: ") and words.format(**fill) in line, line
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60
    assert committed_offsets(bootstrap, waiting_event) == {}


def test_healthz_answers_at_once_and_readyz_waits_for_the_checks(conn: dict[str, str], topics: Topics) -> None:
    port = free_port()
    env = {**os.environ, **conn, **topics.env(), "DFMOD_HTTP_HOST": "127.0.0.1", "DFMOD_HTTP_PORT": str(port),
           "DFMOD_TRITON__URL": f"127.0.0.1:{free_port()}", "DFMOD_TRITON__READY_TIMEOUT_S": "20"}
    proc = subprocess.Popen([str(BIN / "dfmod"), "worker"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, healthz = time.monotonic() + 15, None
        while healthz is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    healthz = r.status
            except OSError:
                time.sleep(0.1)
        assert healthz == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
        assert err.value.code == 503 and b"startup_checks" in err.value.read()
        lines = [json.loads(x) for x in _first_lines(proc, 3)]
        assert any(x.get("check") == "triton" and x["msg"] == "waiting for Triton" for x in lines), lines
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _first_lines(proc: subprocess.Popen[str], n: int) -> list[str]:
    assert proc.stderr is not None
    return [proc.stderr.readline() for _ in range(n)]
