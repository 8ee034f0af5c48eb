"""The pinned deployment tools, built once per session for every chart and monitoring test."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubeconform: Path
    compose: Path
    dockerfile_check: Path
    promql_check: Path


@pytest.fixture(scope="session")
def tools() -> Tools:
    """Build (or find cached) the pinned tools; failing to build them fails the tests."""
    out = subprocess.run(
        [str(REPO / "deploy" / "tools.sh")], capture_output=True, text=True, timeout=1700, check=False
    )
    if out.returncode != 0:
        pytest.fail(f"deploy/tools.sh failed ({out.returncode}):\n{out.stdout}\n{out.stderr[-4000:]}")
    paths = {line.split()[0]: Path(line.split()[1]) for line in out.stdout.splitlines() if line.strip()}
    return Tools(helm=paths["helm"], kubeconform=paths["kubeconform"], compose=paths["docker-compose"],
                 dockerfile_check=paths["dockerfile-check"], promql_check=paths["promql-check"])
