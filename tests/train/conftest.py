"""Fixtures shared by the training tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def weights_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Backbone files a test builds from are cached in a temporary folder, never in the user's cache."""
    path = tmp_path_factory.mktemp("weights-cache")
    monkeypatch.setenv("DFMOD_WEIGHTS_CACHE", str(path))
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The test machine's cores are shared; one intra-op thread is faster there and just as exact."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
