"""`dfmod hashlist`: import, stats and export against a real redis-server; errors are one line and an exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.cli.main import main

from ..redis_server import RedisServer

HASH = "ab" * 32


@pytest.fixture
def env(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> RedisServer:
    monkeypatch.setenv("DFMOD_CACHE__URL", redis_server.url)
    monkeypatch.setenv("DFMOD_CACHE__KEY_PREFIX", "t:")
    return redis_server


def test_import_stats_export(env: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text(f"pdq,label,list,source\n{HASH},fake,partner,feed 1\n{'cd' * 32} {'ef' * 32},real,partner,\n")
    assert main(["hashlist", "import", str(csv)]) == 0
    assert json.loads(capsys.readouterr().out) == {"imported": 2, "file": str(csv)}
    assert main(["hashlist", "stats"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [{"list": "partner", "label": "fake", "entries": 1}, {"list": "partner", "label": "real",
                                                                          "entries": 1}]
    assert main(["hashlist", "export", "--list", "partner"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "pdq,label,list,source" and sorted(out[1:]) == sorted(csv.read_text().splitlines()[1:])


def test_a_bad_file_is_a_usage_error_and_redis_down_an_infrastructure_one(
        env: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(f"pdq,label,list,source\n{HASH},maybe,partner,x\n")
    assert main(["hashlist", "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 2: label must be fake or real" in err
    assert main(["hashlist", "import"]) == 2
    env.stop()
    assert main(["hashlist", "stats"]) == 3
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("dfmod hashlist: error: cannot read the hash lists")
