"""Data side of training: manifest, source readers, leak-free splits, the crop dataset, augmentations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from train.augment import eval_transform, train_transform
from train.data.dataset import CropDataset, collate
from train.data.manifest import CropRecord, read_manifest, write_manifest
from train.data.readers import MediaItem, read_ffpp, read_folders, read_media_manifest, read_source
from train.data.splits import assign_splits, check_no_leak


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# -- manifest ----------------------------------------------------------------------------------------


def test_manifest_roundtrip_and_validation(tmp_path: Path) -> None:
    recs = [
        CropRecord("crops/a/0.png", 0, "a", "ds", 0, "train"),
        CropRecord("crops/b/3.png", 1, "b", "ds2", 3, "test"),
    ]
    path = write_manifest(tmp_path, recs)
    assert path == tmp_path / "manifest.jsonl"
    assert read_manifest(tmp_path) == recs
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"path", "label", "video_id", "dataset", "frame_index", "split"}
    with pytest.raises(ValueError):
        CropRecord("x.png", 2, "a", "ds", 0, "train")
    with pytest.raises(ValueError):
        CropRecord("x.png", 0, "a", "ds", 0, "holdout")
    path.write_text(path.read_text() + '{"path": "x.png"}\n')
    with pytest.raises(ValueError, match=":3:"):
        read_manifest(path)


# -- readers -----------------------------------------------------------------------------------------


def make_ffpp(root: Path) -> None:
    for vid in ("000", "003", "001", "002", "004"):
        touch(root / "original_sequences/youtube/c23/videos" / f"{vid}.mp4")
    for method in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"):  # the paper's four
        for pair in ("000_003", "003_000", "001_002", "002_001"):
            touch(root / "manipulated_sequences" / method / "c23/videos" / f"{pair}.mp4")
    touch(root / "manipulated_sequences/Deepfakes/c40/videos/000_003.mp4")  # other compression: ignored


def test_read_ffpp_labels_ids_groups(tmp_path: Path) -> None:
    make_ffpp(tmp_path)
    items = read_ffpp(tmp_path)
    assert len(items) == 5 + 4 * 4
    real = [i for i in items if i.label == 0]
    assert {i.dataset for i in real} == {"FF-real"} and len(real) == 5
    fake = {i.video_id: i for i in items if i.label == 1}
    assert "FF-Deepfakes/000_003" in fake and "FF-FaceSwap/002_001" in fake
    by_id = {i.video_id: i for i in items}
    # an original, its partner and every manipulation between them are one group
    group = by_id["FF-real/000"].group
    assert by_id["FF-real/003"].group == group
    assert fake["FF-FaceSwap/003_000"].group == group
    assert by_id["FF-real/001"].group != group
    assert by_id["FF-real/004"].group not in {group, by_id["FF-real/001"].group}
    assert read_source(tmp_path) == items  # format guessed


def test_ffpp_official_split(tmp_path: Path) -> None:
    make_ffpp(tmp_path)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.json").write_text(json.dumps([["000", "003"]]))
    (splits / "val.json").write_text(json.dumps([["001", "002"]]))
    (splits / "test.json").write_text(json.dumps([["004", "005"]]))
    items = read_ffpp(tmp_path, split_dir=splits)
    by_id = {i.video_id: i.split for i in items}
    assert by_id["FF-real/000"] == by_id["FF-Deepfakes/003_000"] == "train"
    assert by_id["FF-FaceSwap/001_002"] == by_id["FF-real/002"] == "val"
    assert by_id["FF-real/004"] == "test"
    assert all(i.split == s for i, s in zip(assign_splits(items), [i.split for i in items], strict=True))


def test_read_media_manifest_csv_and_jsonl(tmp_path: Path) -> None:
    touch(tmp_path / "media/a.mp4")
    touch(tmp_path / "media/b.png")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label,video_id,dataset\nmedia/a.mp4,fake,vid-a,mine\nmedia/b.png,0,,\n")
    items = read_media_manifest(csv_path)
    assert [(i.label, i.video_id, i.dataset) for i in items] == [(1, "vid-a", "mine"), (0, "media/b.png", "list")]
    assert items[0].path == tmp_path / "media/a.mp4"
    jl = tmp_path / "list.jsonl"
    jl.write_text(json.dumps({"path": "media/a.mp4", "label": 1, "split": "test"}) + "\n")
    (item,) = read_media_manifest(jl)
    assert item.split == "test" and item.video_id == "media/a.mp4"
    csv_path.write_text("path,label\nmedia/a.mp4,maybe\n")
    with pytest.raises(ValueError, match="row 2"):
        read_media_manifest(csv_path)


def test_read_folders(tmp_path: Path) -> None:
    touch(tmp_path / "real/x/1.jpg")
    touch(tmp_path / "fake/2.mp4")
    touch(tmp_path / "fake/notes.txt")
    items = read_folders(tmp_path)
    assert sorted((i.video_id, i.label) for i in items) == [("fake/2", 1), ("real/x/1", 0)]


# -- splits ------------------------------------------------------------------------------------------


def many_items(n_videos: int = 200) -> list[MediaItem]:
    return [MediaItem(Path(f"{v}.mp4"), v % 2, f"vid{v}", "ds", f"vid{v}") for v in range(n_videos)]


def test_splits_deterministic_fractions_and_no_leak() -> None:
    items = many_items()
    a = assign_splits(items, 0.1, 0.2, seed=7)
    b = assign_splits(list(reversed(items)), 0.1, 0.2, seed=7)
    assert {i.video_id: i.split for i in a} == {i.video_id: i.split for i in b}  # input order irrelevant
    c = assign_splits(items, 0.1, 0.2, seed=8)
    assert {i.video_id: i.split for i in a} != {i.video_id: i.split for i in c}
    counts = {s: sum(1 for i in a if i.split == s) for s in ("train", "val", "test")}
    assert counts == {"train": 140, "val": 20, "test": 40}


def test_frames_of_one_video_never_straddle_splits(tmp_path: Path) -> None:
    # FF++ style groups (an original, its partner and every manipulation between them) through the real
    # splitter and the real manifest-row builder of `prepare`, then read back from the written manifest
    from train.data.prepare import MediaResult, crop_records, crop_relpath

    make_ffpp(tmp_path / "src")
    items = assign_splits(read_ffpp(tmp_path / "src"), 0.3, 0.3, seed=1)
    results = [MediaResult(it, crops=[(crop_relpath(it, f, 0), f) for f in range(4)]) for it in items]
    write_manifest(tmp_path / "out", [r for res in results for r in crop_records(res)])
    records = read_manifest(tmp_path / "out")
    assert len(records) == 4 * len(items)
    group_of = {it.video_id: it.group for it in items}
    split_of_group: dict[str, set[str]] = {}
    for r in records:
        split_of_group.setdefault(group_of[r.video_id], set()).add(r.split)
    assert all(len(s) == 1 for s in split_of_group.values()), split_of_group  # no group straddles
    assert len({next(iter(s)) for s in split_of_group.values()}) > 1  # and the split is not one big bucket
    check_no_leak([(r.video_id, r.split) for r in records])
    check_no_leak([(group_of[r.video_id], r.split) for r in records])
    # the check itself fires on a leak, and so does a per-item splitter that ignores groups
    with pytest.raises(ValueError, match="more than one split"):
        check_no_leak([("v", "train"), ("v", "test")])
    per_item = [(group_of[it.video_id], "train" if k % 2 else "test") for k, it in enumerate(items)]
    with pytest.raises(ValueError, match="more than one split"):
        check_no_leak(per_item)
    clash = [MediaItem(Path("a"), 0, "a", "d", "g", "train"), MediaItem(Path("b"), 1, "b", "d", "g", "test")]
    with pytest.raises(ValueError, match="preset"):
        assign_splits(clash)


# -- dataset and augmentation ------------------------------------------------------------------------


def write_crops(root: Path, n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    imgs, recs = [], []
    for k in range(n):
        img = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
        rel = f"crops/v{k // 2}/{k % 2}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        imgs.append(img)
        recs.append(
            CropRecord(rel, k // 2 % 2, f"v{k // 2}", "A" if k < 4 else "B", k % 2, "train" if k < 4 else "val")
        )
    write_manifest(root, recs)
    return imgs


def test_crop_dataset_returns_stored_pixels(tmp_path: Path) -> None:
    imgs = write_crops(tmp_path)
    ds = CropDataset(tmp_path)
    assert len(ds) == 6
    img, label, idx = ds[3]
    assert img.dtype == torch.uint8 and img.shape == (3, 224, 224)
    assert np.array_equal(img.permute(1, 2, 0).numpy(), imgs[3])  # lossless, RGB order kept
    assert (label, idx) == (1, 3)
    train = CropDataset(tmp_path / "manifest.jsonl", split="train")
    assert len(train) == 4 and train.video_ids == ["v0", "v0", "v1", "v1"]
    assert len(CropDataset(tmp_path, dataset="B")) == 2
    assert len(CropDataset(tmp_path, split="train", dataset=["B"])) == 0
    images, labels, indices = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 224, 224) and labels.tolist() == [0, 0] and indices.tolist() == [0, 1]


def test_train_transform_deterministic_per_seed_epoch_index() -> None:
    img = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 224, 224), dtype=np.uint8))
    t1, t2 = train_transform(seed=5), train_transform(seed=5)
    state = torch.get_rng_state()
    a = t1(img, 3)
    assert torch.equal(torch.get_rng_state(), state)  # caller's RNG untouched
    assert a.dtype == torch.uint8 and a.shape == img.shape
    assert torch.equal(a, t2(img, 3))
    assert not torch.equal(a, img)
    assert not torch.equal(a, t1(img, 4))
    t1.set_epoch(1)
    assert not torch.equal(a, t1(img, 3))
    assert not torch.equal(a, train_transform(seed=6)(img, 3))
    assert eval_transform(img, 0) is img


# -- prepare: the worker's face pipeline, byte-for-byte ------------------------------------------------


def write_video(path: Path, rgb: np.ndarray, n_frames: int = 10) -> None:
    """A short h264 clip panning over the still (a real face that moves)."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 320, "yuv420p"
        for k in range(n_frames):
            x = 60 + 4 * k
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[60 : 60 + 320, x : x + 320]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.fixture(scope="module")
def media_folder(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("media")
    still = shared_dir / "fixtures" / "astronaut.png"
    rgb = read_rgb(still)
    (root / "real").mkdir()
    (root / "fake").mkdir()
    shutil.copy(still, root / "real" / "astronaut.png")
    cv2.imwrite(str(root / "real" / "blank.png"), np.full((256, 256, 3), 128, np.uint8))
    write_video(root / "fake" / "clip.mp4", rgb)
    return root


def test_prepare_crops_are_the_workers_crops(media_folder: Path, shared_dir: Path, tmp_path: Path) -> None:
    from train.cli import main
    from train.data.prepare import decode_settings, face_settings, select_faces
    from worker.faces.extract import extract_faces
    from worker.faces.factory import create_detector
    from worker.media.decode import decode_media

    out = tmp_path / "prepared"
    weights = shared_dir / "models"
    rc = main(
        [
            "prepare",
            str(media_folder),
            "--out",
            str(out),
            "--format",
            "folders",
            "--frames",
            "4",
            "--weights-dir",
            str(weights),
            "--workers",
            "2",
            "--val-fraction",
            "0",
            "--test-fraction",
            "0",
        ]
    )
    assert rc == 0
    records = read_manifest(out)
    by_video: dict[str, list[CropRecord]] = {}
    for r in records:
        by_video.setdefault(r.video_id, []).append(r)
    assert set(by_video) == {"real/astronaut", "fake/clip"}
    assert {r.label for r in by_video["fake/clip"]} == {1} and by_video["real/astronaut"][0].label == 0
    assert all(r.split == "train" and r.dataset == media_folder.name for r in records)

    no_face = [json.loads(line) for line in (out / "no_face.jsonl").read_text().splitlines()]
    assert [(row["video_id"], row["reason"]) for row in no_face] == [("real/blank", "no_face")]

    # the same media through the worker's functions directly: identical pixels, same frames
    fs = face_settings("yunet", weights)
    detector = create_detector(fs)
    for vid, media in (("real/astronaut", "real/astronaut.png"), ("fake/clip", "fake/clip.mp4")):
        decoded = decode_media((media_folder / media).read_bytes(), decode_settings(4))
        direct = select_faces(extract_faces(decoded.frames, detector, fs), 1)
        rows = sorted(by_video[vid], key=lambda r: r.frame_index)
        assert [r.frame_index for r in rows] == [f.frame_index for f in direct]
        for row, face in zip(rows, direct, strict=True):
            stored = read_rgb(out / row.path)
            assert stored.shape == (224, 224, 3)
            assert np.array_equal(stored, face.crop)
    assert len(by_video["fake/clip"]) == 4  # 4 frames sampled, the face found in each
    # and the dataset serves those same pixels
    ds = CropDataset(out, split="train")
    img, _, _ = ds[0]
    first = read_rgb(out / ds.records[0].path)
    assert np.array_equal(img.permute(1, 2, 0).numpy(), first)


def test_crop_paths_never_collide() -> None:
    from train.data.prepare import crop_relpath

    a = crop_relpath(MediaItem(Path("x"), 0, "a/b", "ds", "a/b"), 3, 0)
    b = crop_relpath(MediaItem(Path("y"), 0, "a_b", "ds", "a_b"), 3, 0)
    assert a != b and a.startswith("crops/ds/a_b-") and a.endswith("/000003_0.png")
