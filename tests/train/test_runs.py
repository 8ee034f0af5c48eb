"""Run folders that tell the truth: used folders refused, resumes keep their settings, killed runs keep epochs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.train.test_fit import base_config, build_task
from train.checkpoint import read_checkpoint, save_checkpoint
from train.cli import main
from train.factory import create_model
from train.fit import fit
from train.run_folder import RunFolderError

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("task")
    build_task(root, shared_dir / "fixtures" / "astronaut.png")
    return root


def cli_fit(task: Path, out: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--data",
        str(task),
        "--arch",
        "tiny",
        "--out",
        str(out),
        "--batch-size",
        "24",
        "--no-augment",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_fit_into_a_used_folder_is_refused_and_overwrite_clears_it(task: Path, tmp_path: Path) -> None:
    cfg = replace(base_config(task, tmp_path / "run"), epochs=1)
    first = fit(cfg)
    assert first.best_checkpoint is not None
    with pytest.raises(RunFolderError, match="already holds a run"):
        fit(cfg)
    assert first.best_checkpoint.is_file()  # the refusal touched nothing
    (tmp_path / "broken.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):  # a new run that cannot be built clears nothing
        fit(replace(cfg, overwrite=True, init=tmp_path / "broken.pt"))
    assert first.best_checkpoint.is_file()
    again = fit(replace(cfg, overwrite=True, max_steps=1))  # stops before any epoch ends: no best.pt can exist
    assert again.best_checkpoint is None and not (tmp_path / "run" / "best.pt").exists()
    assert not (tmp_path / "run" / "history.json").exists()  # the old run's epochs went with it
    assert sorted(p.name for p in (tmp_path / "run").glob("last.state-*.pt")) == ["last.state-000000001.pt"]
    assert read_checkpoint(tmp_path / "run" / "last.pt")["extra"]["step"] == 1


def test_resume_restores_the_runs_settings_and_refuses_conflicting_flags(
    task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(cli_fit(task, out, "--epochs", "2", "--lr", "0.03", "--max-steps", "1")) == 0
    capsys.readouterr()
    # no flags: the run's own lr (0.03) and epochs (2), not the recipe's 8e-5 and 10
    assert main(["fit", "--data", str(task), "--out", str(out), "--resume", "--max-steps", "2", "--no-progress"]) == 0
    cfg = read_checkpoint(out / "last.pt")["config"]
    assert (cfg["lr"], cfg["epochs"], cfg["arch"], cfg["batch_size"]) == (0.03, 2, "tiny", 24)
    capsys.readouterr()
    # a conflicting flag is refused, in one line, and the run is untouched
    before = (out / "last.pt").read_bytes()
    assert main([*cli_fit(task, out, "--lr", "0.1", "--resume")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr: 0.03 -> 0.1" in err[0] and "--allow-override" in err[0]
    assert (out / "last.pt").read_bytes() == before
    # the architecture of a run can never change
    assert main([*cli_fit(task, out, "--resume", "--allow-override"), "--arch", "ViT-B-32"]) == 1
    assert "keeps its arch" in capsys.readouterr().err
    # with --allow-override the change is made and recorded
    assert main([*cli_fit(task, out, "--lr", "0.1", "--resume", "--allow-override", "--max-steps", "3")]) == 0
    history = json.loads((out / "history.json").read_text())
    overrides = [h for h in history if h["event"] == "override"]
    assert overrides == [{"event": "override", "epoch": 0, "step": 2, "changes": {"lr": {"was": 0.03, "now": 0.1}}}]
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["lr"] == 0.1 and run["resumes"][-1]["overrides"] == {"lr": [0.03, 0.1]}


def test_a_killed_run_keeps_its_finished_epochs(task: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "train.cli", *cli_fit(task, out, "--epochs", "500", "--lr", "0.03")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    history_path = out / "history.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if history_path.is_file() and len(json.loads(history_path.read_text())) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.15)  # into the next epoch's steps
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    history = json.loads(history_path.read_text())  # a complete JSON document, never half a file
    epochs = [h["epoch"] for h in history]
    assert len(epochs) >= 2 and epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 500
    assert all("video_map" in h and "loss" in h for h in history)
    assert read_checkpoint(out / "last.pt")["extra"]["epoch"] >= epochs[-1]
    # and the killed run resumes from its folder with the epochs it had
    assert main(["fit", "--data", str(task), "--out", str(out), "--resume", "--no-progress", "--max-steps", "1"]) == 0
    assert [h["epoch"] for h in json.loads(history_path.read_text())][: len(epochs)] == epochs


def test_init_from_an_imported_checkpoint_defaults_to_its_own_hyper_parameters(task: Path, tmp_path: Path) -> None:
    from tests.train.test_recipes import gend_hparams

    src = tmp_path / "imported.pt"
    detector = create_model("tiny", seed=5)
    with torch.no_grad():
        detector.head.weight.fill_(0.25)
    save_checkpoint(src, detector, {})
    payload = torch.load(src, weights_only=True)
    hp = gend_hparams() | {"max_epochs": 3, "lr": 2e-3}
    payload["imported"] = {"format": "lightning", "source": "hub", "revision": "r1", "sha256": "0" * 64}
    payload["imported"]["hyper_parameters"] = hp
    torch.save(payload, src)

    out = tmp_path / "run"
    args = ["fit", "--data", str(task), "--init", str(src), "--out", str(out), "--batch-size", "24", "--device", "cpu"]
    assert main([*args, "--no-progress", "--lr", "1e-30", "--lr-min", "1e-30"]) == 0
    run = json.loads((out / "run.json").read_text())
    cfg = run["config"]
    assert run["recipe"] == "imported:gend" and cfg["init"] == str(src) and cfg["arch"] == "tiny"
    assert (cfg["epochs"], cfg["uniformity_weight"], cfg["blur_p"]) == (3, 0.5, 0.1)  # from the hparams
    assert cfg["lr"] == 1e-30 and run["sources"]["lr"].startswith("set explicitly")  # a flag still wins
    assert run["sources"]["epochs"] == f"{src} hyper_parameters"
    assert run["startup"]["init"]["imported"]["revision"] == "r1"
    # it started from the imported parameters (lr 1e-30: they are still exactly those)
    trained = read_checkpoint(out / "last.pt")["state_dict"]
    assert torch.equal(trained["head.weight"], torch.full_like(trained["head.weight"], 0.25))


def test_init_from_a_head_without_l2_norm_is_refused_in_one_line(
    task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GenD's 'linear' head reads the raw feature; the recipes train on the hypersphere, so fit refuses it."""
    src = tmp_path / "linear-head.pt"
    save_checkpoint(src, create_model("tiny", seed=5, head_norm=False), {})
    out = tmp_path / "run"
    rc = main(["fit", "--data", str(task), "--init", str(src), "--out", str(out), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "without L2 norm" in err[0] and str(src) in err[0]
    assert not (out / "last.pt").exists()
