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
