"""Every `dfmod-train` sub-command turns bad input into one line on stderr, a non-zero exit, and no files."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from train.checkpoint import save_checkpoint
from train.cli import build_parser, main
from train.data.manifest import CropRecord, write_manifest
from train.factory import create_model

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    good = root / "good.pt"
    save_checkpoint(good, create_model("tiny"), {"arch": "tiny"})
    blob = good.read_bytes()
    (root / "empty.pt").write_bytes(b"")
    (root / "truncated.pt").write_bytes(blob[: len(blob) // 3])
    (root / "garbage.pt").write_bytes(b"not a checkpoint at all\n")
    (root / "empty_folder").mkdir()
    (root / "empty_manifest").mkdir()
    (root / "empty_manifest" / "manifest.jsonl").write_text("")
    data = root / "data"
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    recs = []
    for k in range(4):
        (data / "crops").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / f"crops/{k}.png"), img)
        recs.append(CropRecord(f"crops/{k}.png", k % 2, f"v{k}", "d", 0, "train" if k < 2 else "val"))
    write_manifest(data, recs)
    media = root / "media" / "real"
    media.mkdir(parents=True)
    cv2.imwrite(str(media / "a.png"), img)
    return {
        "root": root,
        "good": good,
        "empty": root / "empty.pt",
        "truncated": root / "truncated.pt",
        "garbage": root / "garbage.pt",
        "missing": root / "missing.pt",
        "data": data,
        "media": root / "media",
    }


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


PREPARE = ["prepare", "{media}", "--out", "{out}"]
CASES = {
    "fit: missing data folder": (["fit", "--data", "{root}/nope", "--arch", "tiny", "--out", "{out}"], "{root}/nope"),
    "fit: empty data folder": (
        ["fit", "--data", "{root}/empty_folder", "--arch", "tiny", "--out", "{out}"],
        "manifest",
    ),
    "fit: empty manifest": (
        ["fit", "--data", "{root}/empty_manifest", "--arch", "tiny", "--out", "{out}"],
        "no training",
    ),
    "fit: init of another arch": (
        ["fit", "--data", "{data}", "--init", "{good}", "--arch", "ViT-B-32", "--out", "{out}"],
        "is for arch tiny, not ViT-B-32",
    ),
    "evaluate: empty checkpoint": (
        ["evaluate", "--checkpoint", "{empty}", "--data", "{data}", "--split", "val", "--out", "{out}"],
        "empty file",
    ),
    "evaluate: truncated checkpoint": (
        ["evaluate", "--checkpoint", "{truncated}", "--data", "{data}", "--split", "val", "--out", "{out}"],
        "truncated or corrupt",
    ),
    "evaluate: missing data": (
        ["evaluate", "--checkpoint", "{good}", "--data", "{root}/nope", "--out", "{out}"],
        "no such file",
    ),
    "calibrate: corrupt checkpoint": (
        ["calibrate", "--checkpoint", "{garbage}", "--data", "{data}", "--out", "{out}"],
        "truncated or corrupt",
    ),
    "calibrate: missing checkpoint": (
        ["calibrate", "--checkpoint", "{missing}", "--data", "{data}", "--out", "{out}"],
        "no such checkpoint",
    ),
    "export: truncated checkpoint": (["export", "--checkpoint", "{truncated}", "--out", "{out}"], "truncated"),
    "prepare: missing detector weights": (
        [*PREPARE, "--detector", "scrfd", "--weights-dir", "{root}/empty_folder", "--workers", "0"],
        "weights",
    ),
    "prepare: missing source": (["prepare", "{root}/nope", "--out", "{out}"], "{root}/nope"),
    "prepare: empty source": (["prepare", "{root}/empty_folder", "--out", "{out}", "--format", "folders"], "no media"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_nonzero_and_writes_nothing(
    case: str, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template, expected = CASES[case]
    names = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path / "out")}
    argv = [a.format(**names) for a in template]
    rc, err = run_cli(argv, capsys)
    assert rc != 0
    assert len(err) == 1, err
    assert err[0].startswith(f"dfmod-train {argv[0]}: error: ")
    assert expected.format(**names) in err[0]
    assert "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert files["good"].stat().st_size > 0


def test_debug_shows_the_traceback(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="truncated or corrupt"):
        args = ["evaluate", "--checkpoint", str(files["truncated"]), "--data", str(files["data"]), "--split", "val"]
        main([*args, "--out", str(tmp_path / "o"), "--debug"])


def test_usage_errors_are_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--data", "x", "--out", "y", "--recipe", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'nope'" in err[0]


def test_every_option_says_its_default() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in [("dfmod-train", parser), *sub.choices.items()]:
        for action in command._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            assert action.help and ("default" in action.help or "required" in action.help), (name, action.dest)


def test_entry_point_version_and_a_real_arch_never_falls_back_to_random_weights(tmp_path: Path) -> None:
    # offline with an empty hub cache: the OpenAI weights cannot be had, whatever this machine has cached
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["HF_HOME"] = str(tmp_path / "hf-home")
    cmd = [sys.executable, "-m", "train.cli"]
    version = subprocess.run([*cmd, "--version"], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert version.stdout.startswith("dfmod-train ")
    data = tmp_path / "data"
    data.mkdir()
    img = np.zeros((224, 224, 3), dtype=np.uint8)
    cv2.imwrite(str(data / "0.png"), img)
    write_manifest(data, [CropRecord("0.png", 0, "v", "d", 0, "train")])
    # ViT-B-32 without --weights means the OpenAI weights; offline they cannot be had, and fit says so
    # instead of training a random backbone
    proc = subprocess.run(
        [*cmd, "fit", "--data", str(data), "--arch", "ViT-B-32", "--out", str(tmp_path / "run"), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1 and "OpenAI weights" in err[0], proc.stderr
    assert not (tmp_path / "run").exists()
