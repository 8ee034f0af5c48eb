"""Drive the local stack from Python: shared by `make demo`, `make bench` and the integration tests.

Everything here starts real processes (deploy/local/stack.sh, `dfmod worker`) and stops them by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STACK_SH = REPO / "deploy" / "local" / "stack.sh"


def astronaut_png() -> Path:
    """The sample portrait: scikit-image's bundled data.astronaut() file (NASA, public domain; dev extra)."""
    from importlib import resources

    path = Path(str(resources.files("skimage.data") / "astronaut.png"))
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: install the dev extra (scikit-image ships the portrait)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = value.strip().strip('"').strip("'")
    return env


def export_standin(model_repo: Path, timeout_s: float = 600) -> None:
    """The stand-in model: a tiny random-init CLIP vision tower, exported with the real export code."""
    subprocess.run(
        [str(BIN / "dfmod-train"), "export", "--arch", "tiny", "--weights", "random-init",
         "--out", str(model_repo), "--backend", "python"],
        check=True, timeout=timeout_s,
    )


@dataclass
class Stack:
    """Kafka + Redis + Triton from deploy/local/stack.sh, in their own stack dir."""

    stack_dir: Path
    model_repo: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "DFMOD_STACK_DIR": str(self.stack_dir),
                "TRITON_MODEL_REPOSITORY": str(self.model_repo), **self.extra_env}

    def run(self, *args: str, timeout_s: float = 900) -> None:
        subprocess.run([str(STACK_SH), *args], check=True, env=self._env(), timeout=timeout_s)

    def up(self, *services: str) -> dict[str, str]:
        self.run("up", *services)
        return self.connection_env()

    def down(self, *services: str) -> None:
        self.run("down", *services, timeout_s=120)

    def is_up(self) -> bool:
        env = self._env()
        done = subprocess.run([str(STACK_SH), "status"], env=env, capture_output=True, text=True, timeout=60)
        return done.returncode == 0

    def connection_env(self) -> dict[str, str]:
        return read_env_file(self.stack_dir / "env")


def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="dfmod-harness")
    try:
        admin.create_topics([NewTopic(name, n, 1) for name, n in partitions.items()], timeout_ms=30_000)
    finally:
        admin.close()


@dataclass
class Topics:
    """A private set of topics and a consumer group, so tests and demos never see each other's events."""

    events: str
    verdicts: str
    dlq: str
    group: str
    retry: str = ""

    @classmethod
    def fresh(cls, bootstrap: str, prefix: str = "t", partitions: int = 4) -> Topics:
        tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
        topics = cls(f"{tag}.events", f"{tag}.verdicts", f"{tag}.dlq", f"{tag}-group", f"{tag}.retry")
        create_topics(bootstrap, {topics.events: partitions, topics.verdicts: partitions, topics.dlq: 1,
                                  topics.retry: partitions})
        return topics

    def env(self) -> dict[str, str]:
        return {
            "DFMOD_KAFKA__EVENTS_TOPIC": self.events,
            "DFMOD_KAFKA__VERDICTS_TOPIC": self.verdicts,
            "DFMOD_KAFKA__DLQ_TOPIC": self.dlq,
            "DFMOD_KAFKA__GROUP_ID": self.group,
            **({"DFMOD_KAFKA__RETRY_TOPIC": self.retry} if self.retry else {}),
        }


class WorkerProcess:
    """A real `dfmod worker` process."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.http_port = free_port()
        self.env = {**os.environ, **env, "DFMOD_HTTP_PORT": str(self.http_port), "DFMOD_HTTP_HOST": "127.0.0.1"}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 120) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([str(BIN / "dfmod"), "worker"], env=self.env, stdout=log, stderr=log)
        self.wait_ready(ready_timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        why = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as exc:  # 503: the body names the checks that fail
                why = exc.read().decode(errors="replace")
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"worker not ready after {timeout_s}s (/readyz: {why}):\n{self.log_tail()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (graceful drain), then SIGKILL if it does not leave in time."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def rss_mb(self) -> float:
        """Resident memory of the worker process now (Linux /proc), in MiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return 0.0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


#: Kafka record headers as kafka-python reads and writes them.
Headers = list[tuple[str, bytes]]


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> None:
    """Send raw (key, value) pairs with acks=all: bad input goes over the wire for real."""
    produce_with_headers(bootstrap, topic, ((k, v, []) for k, v in messages))


def produce_with_headers(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes, Headers]]) -> None:
    """Send raw (key, value, headers) records with acks=all, in order (one key: one partition)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", max_request_size=16 * 1024 * 1024)
    try:
        futures = [producer.send(topic, key=k, value=v, headers=h or None) for k, v, h in records]
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close(timeout=10)


def collect(
    bootstrap: str, topic: str, want: int | set[str], timeout_s: float, key: str = "id"
) -> list[dict[str, Any]]:
    """Read a topic from the beginning until `want` records (a count, or a set of ids all seen) or the timeout."""
    return [doc for doc, _ in collect_with_headers(bootstrap, topic, want, timeout_s, key)]


def collect_with_headers(
    bootstrap: str, topic: str, want: int | set[str], timeout_s: float, key: str = "id"
) -> list[tuple[dict[str, Any], Headers]]:
    """`collect`, each JSON value with its record's headers."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed")
    out: list[tuple[dict[str, Any], Headers]] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=250).values():
                out.extend((json.loads(r.value), list(r.headers or [])) for r in records)
            if isinstance(want, int) and len(out) >= want:
                break
            if isinstance(want, set) and want <= {doc.get(key) for doc, _ in out}:
                break
    finally:
        consumer.close()
    return out
