"""Fixtures of the worker tests: a real redis-server (verdict cache, near-duplicate index, hash lists)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .redis_server import REDIS_SERVER, RedisServer, free_port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).exists():
        pytest.fail(f"{REDIS_SERVER} is required for the cache tests")
    server = RedisServer(tmp_path, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()  # SIGKILL: also ends a SIGSTOPped server
