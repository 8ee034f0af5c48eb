"""Integration fixtures: one real stack (Kafka, Redis, Triton) per session, fresh topics per test."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "deploy" / "local"))

from harness import Stack, Topics, WorkerProcess, export_standin  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("triton_models")
    export_standin(repo)
    return repo


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, model_repo: Path) -> Iterator[Stack]:
    s = Stack(stack_dir=tmp_path_factory.mktemp("stack"), model_repo=model_repo)
    try:
        s.up()
        yield s
    finally:
        s.down()


@pytest.fixture(scope="session")
def conn(stack: Stack) -> dict[str, str]:
    return stack.connection_env()


@pytest.fixture
def bootstrap(conn: dict[str, str]) -> str:
    return conn["DFMOD_KAFKA__BOOTSTRAP_SERVERS"]


@pytest.fixture
def topics(bootstrap: str) -> Topics:
    return Topics.fresh(bootstrap)


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(conn: dict[str, str], topics: Topics, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start real `dfmod worker` processes on this test's topics; all are stopped at teardown."""
    started: list[WorkerProcess] = []

    def factory(**overrides: str) -> WorkerProcess:
        # A cache namespace per test: a verdict cached by an earlier test must never answer this one's media.
        cache_ns = {"DFMOD_CACHE__KEY_PREFIX": f"dfmod:verdict:{topics.events}:"}
        env = {**conn, **topics.env(), "DFMOD_MEDIA_THREADS": "2", "DFMOD_LOG_LEVEL": "INFO", **cache_ns, **overrides}
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker.start()

    yield factory
    for worker in started:
        worker.kill()
