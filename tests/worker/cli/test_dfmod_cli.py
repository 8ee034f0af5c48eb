"""`dfmod` for people and scripts: one-line errors with documented exit codes, bounded waits, help with defaults."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.cli.main import build_parser
from worker.core.version import __version__

REPO = Path(__file__).resolve().parents[3]


def dfmod(*args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "worker.cli.main", *args], capture_output=True, text=True, timeout=120,
                          check=False, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env})
    return done, time.monotonic() - started


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


def test_version() -> None:
    done, _ = dfmod("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"dfmod {__version__}"


def test_every_option_has_help_that_shows_its_default() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        text = command.format_help()
        options = text[text.index("options:"):]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, f"dfmod {name} {action.dest}: no help"
            if action.option_strings:
                entry = options[options.index(action.option_strings[-1]):].split("\n  -")[0]
                assert "(default:" in entry, f"dfmod {name} {action.option_strings}: no default"


@pytest.mark.parametrize(("args", "bound_s"), [(("produce", "README.md", "--timeout", "3"), 10),
                                               (("verdicts", "--timeout", "5"), 12)])
def test_no_broker_ends_within_the_bound_with_one_line(args: tuple[str, ...], bound_s: float) -> None:
    port = dead_port()
    done, took = dfmod(*args, DFMOD_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{port}")
    assert done.returncode == 3 and took < bound_s
    assert done.stderr.splitlines() == [
        f"dfmod {args[0]}: error: Kafka at 127.0.0.1:{port} did not answer within {args[-1]} s "
        "(KafkaTimeoutError; check DFMOD_KAFKA__BOOTSTRAP_SERVERS)"
    ]


def test_a_bad_setting_is_a_usage_error_and_debug_shows_the_traceback() -> None:
    done, _ = dfmod("settings", DFMOD_TRITON__TIMEOUT_S="soon")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "dfmod settings: error: invalid setting DFMOD_TRITON__TIMEOUT_S='soon': Input should be a valid number, "
        "unable to parse string as a number"
    ]
    debug, _ = dfmod("--debug", "settings", DFMOD_TRITON__TIMEOUT_S="soon")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_produce_a_missing_file_is_a_usage_error() -> None:
    done, _ = dfmod("produce", "no-such-file.jpg")
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["dfmod produce: error: no such file: no-such-file.jpg"]
