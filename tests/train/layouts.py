"""Small stand-ins of each benchmark's released layout: a few synthetic videos of the test portrait and
official-style list files with the right columns and labels, one listed video left off the disk.

`python -m tests.train.layouts OUT` writes them (the README's training walk-through runs on them);
`EXPECTED` says, per layout, exactly which video ids (and labels) a reader must return and which it must
report missing, so the tests compare against it rather than against the reader.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import av
import cv2
import numpy as np

FF_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
FF_SPLITS = {"train": [["000", "001"]], "val": [["002", "003"]], "test": [["004", "005"]]}
FF_ABSENT = "manipulated_sequences/Face2Face/c23/videos/005_004.mp4"


def astronaut() -> np.ndarray:
    """The portrait the other tests use (scikit-image's astronaut, public domain), RGB."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def write_video(path: Path, rgb: np.ndarray, variant: int, n_frames: int = 4) -> None:
    """A short h264 clip panning over the portrait; `variant` tints it so every video scores differently."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tint = np.array([(37 * variant) % 61, (53 * variant) % 47, (29 * variant) % 71], dtype=np.int16) - 30
    img = np.clip(rgb.astype(np.int16) + tint, 0, 255).astype(np.uint8)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 320, "yuv420p"
        for k in range(n_frames):
            x = 60 + 4 * k
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[60:380, x : x + 320]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _ffpp_ids() -> tuple[dict[str, int], list[str]]:
    ids: dict[str, int] = {}
    for pairs in FF_SPLITS.values():
        for a, b in pairs:
            ids[f"FF-real/{a}"] = ids[f"FF-real/{b}"] = 0
            for m in FF_METHODS:
                ids[f"FF-{m}/{a}_{b}"] = ids[f"FF-{m}/{b}_{a}"] = 1
    ids.pop("FF-Face2Face/005_004")
    return ids, ["FF-Face2Face/005_004"]


#: layout -> (video id -> label of the items a reader must return, video ids it must report missing)
EXPECTED: dict[str, tuple[dict[str, int], list[str]]] = {
    "celebdf": (
        {
            "Celeb-DF-v2/Celeb-real/id0_0000": 0,
            "Celeb-DF-v2/YouTube-real/00170": 0,
            "Celeb-DF-v2/Celeb-synthesis/id0_id1_0000": 1,
            "Celeb-DF-v2/Celeb-synthesis/id1_id0_0001": 1,
        },
        ["Celeb-DF-v2/Celeb-synthesis/id2_id3_0002"],
    ),
    "dfd": (
        {
            "DFD/DFD_real/01__walking": 0,
            "DFD/DFD_real/02__talking": 0,
            "DFD/DFD_fake/01_02__walking__AAA": 1,
            "DFD/DFD_fake/02_01__talking__BBB": 1,
        },
        [],
    ),
    "dfdc": (
        {"DFDC/aaaa": 0, "DFDC/bbbb": 1, "DFDC/cccc": 1, "DFDC/dddd": 0},
        ["DFDC/eeee"],
    ),
    "ffiw": (
        {
            "FFIW/source/00000": 0,
            "FFIW/source/00001": 0,
            "FFIW/target/00000": 1,
            "FFIW/target/00001": 1,
            "FFIW/target/00002": 1,
        },
        ["FFIW/source/00002"],
    ),
    "deepspeak": (
        {
            "DeepSpeak/real/a": 0,
            "DeepSpeak/real/b": 0,
            "DeepSpeak/facefusion/c": 1,
            "DeepSpeak/wav2lip/d": 1,
        },
        [],
    ),
    "ffpp": _ffpp_ids(),
}


def write_layouts(out: Path) -> dict[str, Path]:
    """Write every stand-in below `out`; returns layout -> the folder to pass to `prepare`."""
    out = Path(out)
    rgb = astronaut()
    n = iter(range(1000))

    cdf = out / "Celeb-DF-v2"
    lines = []
    for vid, label in EXPECTED["celebdf"][0].items():
        rel = vid.removeprefix("Celeb-DF-v2/") + ".mp4"
        write_video(cdf / rel, rgb, next(n))
        lines.append(f"{1 - label} {rel}")
    lines.insert(2, "0 Celeb-synthesis/id2_id3_0002.mp4")  # listed, not on disk
    (cdf / "List_of_testing_videos.txt").write_text("\n".join(lines) + "\n")

    ff = out / "FaceForensics++"
    for vid, label in EXPECTED["ffpp"][0].items():
        ds, name = vid.split("/")
        sub = "original_sequences/youtube" if label == 0 else f"manipulated_sequences/{ds.removeprefix('FF-')}"
        write_video(ff / sub / "c23/videos" / f"{name}.mp4", rgb, next(n))
    write_video(ff / "manipulated_sequences/FaceShifter/c23/videos/000_001.mp4", rgb, next(n))  # not read by default
    for vid, label in EXPECTED["dfd"][0].items():
        sub = "original_sequences/actors" if label == 0 else "manipulated_sequences/DeepFakeDetection"
        write_video(ff / sub / "c23/videos" / f"{vid.split('/')[-1]}.mp4", rgb, next(n))
    (ff / "splits").mkdir(parents=True, exist_ok=True)
    for split, pairs in FF_SPLITS.items():
        (ff / "splits" / f"{split}.json").write_text(json.dumps(pairs))

    dfdc = out / "DFDC"
    (dfdc / "test").mkdir(parents=True, exist_ok=True)
    with (dfdc / "test" / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "label"])
        for vid, label in [*EXPECTED["dfdc"][0].items(), ("DFDC/eeee", 1)]:
            name = vid.removeprefix("DFDC/") + ".mp4"
            w.writerow([name, label])
            if vid != "DFDC/eeee":
                write_video(dfdc / "test" / "videos" / name, rgb, next(n))

    ffiw = out / "FFIW10K-v1-release"
    for vid in EXPECTED["ffiw"][0]:
        _, folder, name = vid.split("/")
        write_video(ffiw / folder / "test" / f"{name}.mp4", rgb, next(n))

    ds = out / "DeepSpeak_v1"
    for vid in EXPECTED["deepspeak"][0]:
        write_video(ds / "test" / (vid.removeprefix("DeepSpeak/") + ".mp4"), rgb, next(n))

    dfb = out / "deepfakebench"
    doc: dict[str, dict[str, dict[str, dict[str, object]]]] = {"Celeb-DF-v2": {}}
    for vid, label in (("id0_0000", 0), ("id0_id1_0000", 1)):
        lname = "CelebDFv2_fake" if label else "CelebDFv2_real"
        frames = []
        for k in (0, 15):
            frame = dfb / "frames" / vid / f"{k:03d}.png"
            frame.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(
                str(frame),
                cv2.cvtColor(rgb[60:380, 60 + 2 * k + 4 * label : 380 + 2 * k + 4 * label], cv2.COLOR_RGB2BGR),
            )
            frames.append(frame.relative_to(dfb).as_posix())
        doc["Celeb-DF-v2"][lname] = {"train": {}, "val": {}, "test": {vid: {"label": lname, "frames": frames}}}
    doc["Celeb-DF-v2"]["CelebDFv2_fake"]["test"]["id9_id8_0009"] = {
        "label": "CelebDFv2_fake",
        "frames": ["frames/id9_id8_0009/000.png"],
    }
    (dfb / "Celeb-DF-v2.json").write_text(json.dumps(doc, indent=1))

    return {
        "celebdf": cdf,
        "ffpp": ff,
        "dfd": ff,
        "dfdc": dfdc,
        "ffiw": ffiw,
        "deepspeak": ds,
        "deepfakebench": dfb / "Celeb-DF-v2.json",
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.train.layouts OUT")
    for name, path in write_layouts(Path(sys.argv[1])).items():
        print(f"{name}\t{path}")
