"""Benchmark readers on stand-ins of each released layout: exactly the official list, missing videos reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.layouts import EXPECTED, FF_METHODS, write_layouts
from train.data.benchmarks import READERS, read_deepfakebench, read_listing


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_layouts(tmp_path_factory.mktemp("layouts"))


@pytest.mark.parametrize("name", ["celebdf", "dfd", "dfdc", "ffiw", "deepspeak"])
def test_reader_returns_the_official_list_exactly(layouts: dict[str, Path], name: str) -> None:
    listing = read_listing(layouts[name], name)
    ids, missing = EXPECTED[name]
    assert {it.video_id: it.label for it in listing.items} == ids
    assert len(listing.items) == len(ids)  # no duplicates
    assert [m.video_id for m in listing.missing] == missing  # absent from disk: reported, not skipped
    assert listing.listed == len(ids) + len(missing)
    assert {it.split for it in listing.items} == {"test"}
    assert all(it.path.is_file() for it in listing.items)


def test_celebdf_label_one_means_real(layouts: dict[str, Path]) -> None:
    text = (layouts["celebdf"] / "List_of_testing_videos.txt").read_text()
    assert "1 YouTube-real/00170.mp4" in text
    by_id = {it.video_id: it.label for it in READERS["celebdf"](layouts["celebdf"]).items}
    assert by_id["Celeb-DF-v2/YouTube-real/00170"] == 0


def test_celebdf_label_contradicting_its_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "List_of_testing_videos.txt").write_text("1 Celeb-synthesis/id0_id1_0000.mp4\n")
    with pytest.raises(ValueError, match=":1: label 1 contradicts"):
        READERS["celebdf"](tmp_path)


def test_ffpp_official_splits_four_methods_and_missing(layouts: dict[str, Path]) -> None:
    listing = read_listing(layouts["ffpp"], "ffpp", layouts["ffpp"] / "splits")
    ids, missing = EXPECTED["ffpp"]
    assert {it.video_id: it.label for it in listing.items} == ids
    assert {it.dataset for it in listing.items} == {"FF-real", *(f"FF-{m}" for m in FF_METHODS)}
    assert [m.video_id for m in listing.missing] == missing
    splits = {it.video_id: it.split for it in listing.items}
    assert splits["FF-real/000"] == splits["FF-NeuralTextures/001_000"] == "train"
    assert splits["FF-real/004"] == splits["FF-Deepfakes/005_004"] == "test"
    other = read_listing(layouts["ffpp"], "ffpp", layouts["ffpp"] / "splits", ("FaceShifter",))
    assert {it.dataset for it in other.items} == {"FF-real", "FF-FaceShifter"}


def test_deepfakebench_json(layouts: dict[str, Path]) -> None:
    listing = read_deepfakebench(layouts["deepfakebench"])
    got = {(it.video_id, it.label, it.frame) for it in listing.items}
    assert got == {
        ("Celeb-DF-v2/CelebDFv2_real_id0_0000", 0, 0),
        ("Celeb-DF-v2/CelebDFv2_real_id0_0000", 0, 15),
        ("Celeb-DF-v2/CelebDFv2_fake_id0_id1_0000", 1, 0),
        ("Celeb-DF-v2/CelebDFv2_fake_id0_id1_0000", 1, 15),
    }
    assert [m.video_id for m in listing.missing] == ["Celeb-DF-v2/CelebDFv2_fake_id9_id8_0009"]


def test_dfdc_needs_its_label_columns(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "labels.csv").write_text("name,fake\nx.mp4,1\n")
    with pytest.raises(ValueError, match="filename,label"):
        READERS["dfdc"](tmp_path)


def test_prepare_a_test_set_writes_listing_and_refuses_unsplit_ffpp(
    layouts: dict[str, Path], tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.cli import main

    common = ["--frames", "2", "--weights-dir", str(models_dir), "--workers", "0"]
    out = tmp_path / "cdf"
    assert main(["prepare", str(layouts["celebdf"]), "--format", "celebdf", "--out", str(out), *common]) == 0
    listing = json.loads((out / "listing.json").read_text())
    assert listing["benchmark"] == "celebdf" and listing["videos_listed"] == 5 and listing["videos_on_disk"] == 4
    assert [m["video_id"] for m in listing["missing"]] == EXPECTED["celebdf"][1]
    assert len(listing["preprocessing_id"]) == 12
    assert "listed but not on disk" in capsys.readouterr().out  # the missing video is printed too
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"test"} and {r["video_id"] for r in rows} == set(EXPECTED["celebdf"][0])

    rc = main(["prepare", str(layouts["ffpp"]), "--out", str(tmp_path / "ff"), *common])
    assert rc == 1
    assert "--ffpp-splits" in capsys.readouterr().err


# -- dfmod-train benchmark -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(layouts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> dict[str, Path]:
    from train.cli import main

    root = tmp_path_factory.mktemp("prepared")
    out = {}
    for name in ("celebdf", "dfdc", "ffiw"):
        out[name] = root / name
        args = ["prepare", str(layouts[name]), "--format", name, "--out", str(out[name]), "--frames", "2"]
        assert main([*args, "--weights-dir", str(models_dir), "--workers", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train.checkpoint import save_checkpoint
    from train.factory import create_model

    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(path, create_model("tiny", seed=3), {"arch": "tiny"})
    return path


def test_benchmark_table_matches_sklearn_and_caches_scores(
    prepared: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv

    from sklearn.metrics import average_precision_score, roc_auc_score

    from train.cli import main

    dirs = [str(prepared[n]) for n in ("celebdf", "dfdc", "ffiw")]
    assert main(["benchmark", *dirs, "--model", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {d["key"]: d for d in doc["datasets"]}
    assert [rows[k]["scored"] for k in ("celebdf", "dfdc", "ffiw")] == [4, 4, 5]
    assert [rows[k]["listed"] for k in ("celebdf", "dfdc", "ffiw")] == [5, 5, 6]
    assert rows["celebdf"]["dropped"] == {"not_on_disk": 1} and rows["ffiw"]["dropped"] == {"no_partner": 1}
    assert rows["celebdf"]["paper"] == 96.62 and not any(r["cached"] for r in rows.values())
    for key, row in rows.items():
        with open(row["cache"], newline="") as fh:
            crops = list(csv.DictReader(fh))
        by_video: dict[str, dict[int, float]] = {}
        labels: dict[str, int] = {}
        for c in crops:  # the worker's rule, by hand: max over a frame's faces, mean over frames
            frames = by_video.setdefault(c["video_id"], {})
            frames[int(c["frame_index"])] = max(frames.get(int(c["frame_index"]), 0.0), float(c["score"]))
            labels[c["video_id"]] = int(c["label"])
        y = [labels[v] for v in by_video]
        s = [sum(f.values()) / len(f) for f in by_video.values()]
        assert row["video_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12), key
        assert row["video_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12), key
        assert row["delta"] == pytest.approx(100 * row["video_auroc"] - row["paper"])
    assert (tmp_path / "b" / "roc_video.png").is_file() and (tmp_path / "b" / "benchmark.json").is_file()

    # a second run reads the cached scores (same model, same preprocessing): inference only once
    assert main(["benchmark", *dirs, "--model", str(tiny_checkpoint), "--out", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    assert "Celeb-DF-v2" in printed and "96.62" in printed and "4 / 5" in printed
    again = json.loads((tmp_path / "c" / "benchmark.json").read_text())
    assert all(d["cached"] for d in again["datasets"])
    assert [d["video_auroc"] for d in again["datasets"]] == [d["video_auroc"] for d in doc["datasets"]]


def test_benchmark_scores_an_exported_triton_repository_like_its_checkpoint(
    prepared: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from train.benchmark import benchmark
    from train.checkpoint import load_checkpoint
    from train.export import export_repository

    detector, _ = load_checkpoint(tiny_checkpoint)
    export_repository(detector, tmp_path / "repo", backend="onnxruntime")
    torch_doc = benchmark(tiny_checkpoint, [prepared["dfdc"]], tmp_path / "t", device="cpu", plots=False)
    onnx_doc = benchmark(tmp_path / "repo", [prepared["dfdc"]], tmp_path / "o", plots=False)
    assert onnx_doc["model_kind"] == "triton" and onnx_doc["model_sha256"] != torch_doc["model_sha256"]
    (t,), (o,) = torch_doc["datasets"], onnx_doc["datasets"]
    assert t["scored"] == o["scored"] == 4
    with open(t["cache"]) as a, open(o["cache"]) as b:
        ta = [float(r.split(",")[-1]) for r in a.read().splitlines()[1:]]
        ob = [float(r.split(",")[-1]) for r in b.read().splitlines()[1:]]
    assert ob == pytest.approx(ta, abs=1e-5)


def test_evaluate_on_a_test_set_scores_the_whole_official_list(
    prepared: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.cli import main

    args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(prepared["celebdf"])]
    assert main([*args, "--out", str(tmp_path), "--no-plots", "--device", "cpu"]) == 0  # default split: test
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["coverage"] == {"benchmark": "celebdf", "videos_listed": 5, "videos_scored": 4,
                               "dropped": {"not_on_disk": 1}}  # fmt: skip
    assert doc["metrics"]["all"]["video"]["n"] == 4
    assert "celebdf: 4 of 5 listed videos scored (not_on_disk 1)" in capsys.readouterr().out


def test_an_unreadable_listed_video_is_counted_as_dropped(
    layouts: dict[str, Path], tmp_path: Path, models_dir: Path, tiny_checkpoint: Path
) -> None:
    import shutil

    from train.benchmark import benchmark
    from train.cli import main

    src = tmp_path / "cdf"
    shutil.copytree(layouts["celebdf"], src)
    (src / "Celeb-real" / "id0_0000.mp4").write_bytes(b"not a video")
    out = tmp_path / "prepared"
    args = ["prepare", str(src), "--format", "celebdf", "--out", str(out), "--frames", "2"]
    assert main([*args, "--weights-dir", str(models_dir), "--workers", "0"]) == 0
    (row,) = benchmark(tiny_checkpoint, [out], tmp_path / "b", device="cpu", plots=False)["datasets"]
    assert row["listed"] == 5 and row["scored"] == 3
    assert row["dropped"] == {"decode_failed": 1, "not_on_disk": 1}


def test_prepare_a_deepfakebench_json_keeps_frame_numbers(
    layouts: dict[str, Path], tmp_path: Path, models_dir: Path
) -> None:
    from train.cli import main

    out = tmp_path / "dfb"
    args = ["prepare", str(layouts["deepfakebench"]), "--format", "deepfakebench", "--out", str(out)]
    assert main([*args, "--weights-dir", str(models_dir), "--workers", "0"]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted((r["video_id"], r["frame_index"], r["label"]) for r in rows) == [
        ("Celeb-DF-v2/CelebDFv2_fake_id0_id1_0000", 0, 1),
        ("Celeb-DF-v2/CelebDFv2_fake_id0_id1_0000", 15, 1),
        ("Celeb-DF-v2/CelebDFv2_real_id0_0000", 0, 0),
        ("Celeb-DF-v2/CelebDFv2_real_id0_0000", 15, 0),
    ]
    listing = json.loads((out / "listing.json").read_text())
    assert listing["videos_listed"] == 3 and listing["videos_on_disk"] == 2
