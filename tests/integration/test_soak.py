"""The soak benchmark's reduced mode runs end to end, so `make soak` cannot rot (no timing assertions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from soak import print_table, run_soak


def test_reduced_soak_loses_nothing(conn: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = run_soak(conn, n_events=40, kills=1, tmp=tmp_path)
    print_table(row)
    out = capsys.readouterr().out
    assert "lost" in out and "rss_end_mb" in out
    assert row["events"] == 40 and row["lost"] == 0, row
    assert row["verdicts"] == 40 - row["kind_unparseable"] and row["dlq"] >= row["kind_unparseable"] > 0, row
    assert row["errors"] == 0, "kill -9 and restart must not turn into error verdicts"


def test_exactly_once_soak_publishes_each_verdict_once_across_kill_9(conn: dict[str, str], tmp_path: Path) -> None:
    """Two kill -9 mid-wave: a read_committed reader sees every event answered exactly once, nothing lost."""
    row = run_soak(conn, n_events=40, kills=2, tmp=tmp_path, exactly_once=True)
    assert row["mode"] == "exactly-once" and row["lost"] == 0, row
    assert row["verdicts"] == 40 - row["kind_unparseable"] and row["duplicates"] == 0, row
    assert row["dlq"] == row["kind_unparseable"], "each unparseable record dead-lettered exactly once"
    assert row["errors"] == 0, row
