"""`make bench-neardup`: how well PDQ / vPDQ near-duplicate matching finds re-uploads, and what hashing costs.

Originals: scikit-image's sample pictures as stills, pans over them and `make bench`'s moving-face clip as
H.264 videos. Each gets transformed copies (JPEG quality 40-95, resize 0.5-1.5x, crop up to 10 %, a logo
overlay, a horizontal flip; for video an H.264 re-encode at other bitrates and resolutions, crop, logo, flip),
and there are distinct media besides (other pictures, other pans) and face swaps (the same pan over the same scene
with another face in the face's box: a different media as far as a deepfake detector is concerned).
Everything is decoded and hashed by the worker's own code (`decode_media`, `hash_frames`) and compared with
every original by the worker's rule (`similar.match`, the settings' defaults unless overridden). Printed:

1. per transform: the median PDQ distance of the copies to their own original (bits), recall (copies
   matched to their own original) and false matches (queries matched to another original; for distinct
   media and the face swap, any match);
2. a sweep of the PDQ distance: recall over all copies and false-matching queries and pairs;
3. CPU per still and per video (one thread): decode, PDQ hashing, and face detection + alignment (what a
   near-duplicate answer saves, besides the inference).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2
import numpy as np
from bench_media import VideoSpec, moving_face_video, reencode
from skimage import data
from tqdm import tqdm

from worker.cli.demo_media import encode_image, pan_zoom_video
from worker.core.settings import DecodeSettings, FaceSettings, NearDuplicateSettings
from worker.core.types import RGBImage
from worker.faces.extract import extract_faces
from worker.faces.factory import create_detector
from worker.media.decode import decode_media
from worker.scoring.similar import MediaHashes, hash_frames, match

ORIGINAL_STILLS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel", "camera",
                   "brick", "grass", "gravel", "moon", "horse", "clock", "coins", "page", "text",
                   "shepp_logan_phantom"]  # not binary_blobs: it is random on each call
ORIGINAL_PANS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera"]
DISTINCT_PANS = ["moon", "horse", "clock", "coins"]
SWEEP = (8, 16, 24, 31, 40, 48, 56)


def picture(name: str) -> RGBImage:
    rgb = np.asarray(getattr(data, name)())
    if rgb.dtype != np.uint8:
        rgb = (255 * (rgb.astype(np.float32) / max(1.0, float(rgb.max())))).astype(np.uint8)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return np.ascontiguousarray(rgb[..., :3])


def quadrants(name: str) -> list[RGBImage]:
    """Four distinct pictures from one large one (its quarters)."""
    rgb = picture(name)
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    return [np.ascontiguousarray(rgb[y:y + h, x:x + w]) for y in (0, h) for x in (0, w)]


# -- transforms of an RGB picture ------------------------------------------------------------------------------

def _resize(rgb: RGBImage, factor: float) -> RGBImage:
    size = (max(8, round(rgb.shape[1] * factor)) // 2 * 2, max(8, round(rgb.shape[0] * factor)) // 2 * 2)
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if factor < 1 else
                                           cv2.INTER_LINEAR))


def _crop(rgb: RGBImage, fraction: float) -> RGBImage:
    """`fraction` of the width and of the height cut off the left and top (asymmetric: the harder case)."""
    h, w = rgb.shape[:2]
    return np.ascontiguousarray(rgb[round(h * fraction) // 2 * 2:, round(w * fraction) // 2 * 2:])


def _centre_crop(rgb: RGBImage, fraction: float) -> RGBImage:
    """`fraction` of the width and of the height cut off, half on each side."""
    h, w = rgb.shape[:2]
    dy, dx = round(h * fraction / 2), round(w * fraction / 2)
    return np.ascontiguousarray(rgb[dy:h - dy, dx:w - dx])


_LOGO = picture("logo")


def _logo(rgb: RGBImage) -> RGBImage:
    """The scikit-image logo over the bottom-right corner, a fifth of the width, 80 % opaque."""
    h, w = rgb.shape[:2]
    side = max(8, w // 5)
    logo = cv2.resize(_LOGO, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    out = rgb.astype(np.float32)
    y, x = h - side - h // 40, w - side - w // 40
    out[y:y + side, x:x + side] = 0.2 * out[y:y + side, x:x + side] + 0.8 * logo
    return out.astype(np.uint8)


def _flip(rgb: RGBImage) -> RGBImage:
    return np.ascontiguousarray(rgb[:, ::-1])


#: still transforms: name -> (RGB -> encoded bytes)
STILL_TRANSFORMS: dict[str, Callable[[RGBImage], bytes]] = {
    "jpeg q95": lambda rgb: encode_image(rgb, fmt="jpeg", quality=95),
    "jpeg q70": lambda rgb: encode_image(rgb, fmt="jpeg", quality=70),
    "jpeg q40": lambda rgb: encode_image(rgb, fmt="jpeg", quality=40),
    "resize 0.5x": lambda rgb: encode_image(_resize(rgb, 0.5), fmt="jpeg", quality=90),
    "resize 0.75x": lambda rgb: encode_image(_resize(rgb, 0.75), fmt="jpeg", quality=90),
    "resize 1.5x": lambda rgb: encode_image(_resize(rgb, 1.5), fmt="jpeg", quality=90),
    "crop 5 % centred": lambda rgb: encode_image(_centre_crop(rgb, 0.05), fmt="jpeg", quality=90),
    "crop 5 %": lambda rgb: encode_image(_crop(rgb, 0.05), fmt="jpeg", quality=90),
    "crop 10 %": lambda rgb: encode_image(_crop(rgb, 0.10), fmt="jpeg", quality=90),
    "logo overlay": lambda rgb: encode_image(_logo(rgb), fmt="jpeg", quality=90),
    "flip": lambda rgb: encode_image(_flip(rgb), fmt="jpeg", quality=90),
}


# -- videos -----------------------------------------------------------------------------------------------------

VIDEO_TRANSFORMS: dict[str, Callable[[bytes], bytes]] = {
    "h264 crf 35": lambda blob: reencode(blob, crf=35),
    "h264 0.5x crf 28": lambda blob: reencode(blob, lambda rgb: _resize(rgb, 0.5), crf=28),
    "h264 1.5x crf 23": lambda blob: reencode(blob, lambda rgb: _resize(rgb, 1.5), crf=23),
    "crop 10 %": lambda blob: reencode(blob, lambda rgb: _crop(rgb, 0.10)),
    "logo overlay": lambda blob: reencode(blob, _logo),
    "flip": lambda blob: reencode(blob, _flip),
}


def face_clip(face: RGBImage) -> bytes:
    return moving_face_video(face, VideoSpec("480p", 4.0, noise=24))


def paste(scene: RGBImage, face: RGBImage, box: tuple[int, int, int, int]) -> RGBImage:
    """`scene` with `face` resized into `box` (x, y, w, h)."""
    x, y, w, h = box
    out = scene.copy()
    out[y:y + h, x:x + w] = cv2.resize(face, (w, h), interpolation=cv2.INTER_AREA)
    return out


# -- hashing and matching -----------------------------------------------------------------------------------------

@dataclass
class Hashed:
    name: str
    hashes: MediaHashes
    sha: str
    decode_s: float = 0.0
    hash_s: float = 0.0
    faces_s: float = 0.0
    frames: int = 0


def hashed(name: str, blob: bytes, decode: DecodeSettings, faces: FaceSettings | None = None) -> Hashed:
    """Decode and hash as the worker does; with `faces`, also time detection + alignment on the same frames."""
    start = time.process_time()
    media = decode_media(blob, decode)
    decoded = time.process_time()
    _, hashes = hash_frames(media.frames)
    done = time.process_time()
    assert hashes is not None, f"{name}: nothing hashed"
    result = Hashed(name, hashes, hashlib.sha256(blob).hexdigest(), decoded - start, done - decoded,
                    frames=len(media.frames))
    if faces is not None:
        detector = create_detector(faces)
        start = time.process_time()
        extract_faces(media.frames, detector, faces)
        result.faces_s = time.process_time() - start
    return result


def best(query: Hashed, originals: list[Hashed], settings: NearDuplicateSettings) -> str | None:
    """The sha256 of the original `query` matches best (the index's rule), or None."""
    found = [m for o in originals if (m := match(query.hashes.usable(settings.min_quality), o.hashes, o.sha,
                                                 settings)) is not None]
    if not found:
        return None
    return max(found, key=lambda m: (min(m.match_pct, m.query_match_pct), -m.distance)).media_sha256


@dataclass
class Row:
    kind: str
    transform: str
    queries: list[tuple[Hashed, str | None]]  # (query, the sha256 of its own original; None: distinct media)
    #: False: the query is a different media made from its "original" (a face swap): any match is false
    expect_match: bool = True

    def bits(self, originals: list[Hashed]) -> float | None:
        """Median PDQ distance of the copies to their own original (vPDQ's mean over matched frames)."""
        anything = NearDuplicateSettings.model_construct(max_distance=256, match_pct=0, query_match_pct=0,
                                                         min_quality=0)
        by_sha = {o.sha: o for o in originals}
        found = [match(q.hashes.usable(0), by_sha[own].hashes, own, anything) for q, own in self.queries
                 if own is not None]
        return float(np.median([m.distance for m in found if m is not None])) if found else None

    def score(self, originals: list[Hashed], settings: NearDuplicateSettings) -> tuple[int, int, int]:
        """(copies, matched to their own original, matched to another / any for distinct media)."""
        copies = sum(1 for _, own in self.queries if own is not None and self.expect_match)
        right = wrong = 0
        for query, own in self.queries:
            got = best(query, [o for o in originals if o.sha != query.sha], settings)
            if got is not None and got == own and self.expect_match:
                right += 1
            elif got is not None:
                wrong += 1
        return copies, right, wrong


def build(args: argparse.Namespace) -> tuple[list[Hashed], list[Hashed], list[Row], list[Hashed]]:
    decode = DecodeSettings()
    faces = FaceSettings()
    stills = ORIGINAL_STILLS[:4] if args.quick else ORIGINAL_STILLS
    pans = ORIGINAL_PANS[:2] if args.quick else ORIGINAL_PANS
    pan_size = (320, 240) if args.quick else (480, 360)
    rows: list[Row] = []

    still_originals = [hashed(n, encode_image(picture(n), fmt="png"), decode, faces) for n in tqdm(stills, "stills")]
    by_name = {h.name: h for h in still_originals}
    for transform, fn in tqdm(STILL_TRANSFORMS.items(), "still copies"):
        rows.append(Row("still", transform, [(hashed(n, fn(picture(n)), decode), by_name[n].sha) for n in stills]))
    distinct = [encode_image(q, fmt="png") for big in ("hubble_deep_field", "retina") for q in quadrants(big)]
    rows.append(Row("still", "distinct pictures", [(hashed(f"distinct {i}", b, decode), None)
                                                    for i, b in enumerate(distinct)]))

    def pan_of(rgb: RGBImage) -> bytes:
        return pan_zoom_video(rgb, seconds=2.0 if args.quick else 4.0, fps=15, size=pan_size)

    def pan(name: str) -> bytes:
        return pan_of(picture(name))

    clips = {n: pan(n) for n in tqdm(pans, "videos")}
    face = picture("astronaut")[40:200, 150:310]
    clips["moving face"] = face_clip(face)
    video_originals = [hashed(n, b, decode, faces) for n, b in clips.items()]
    by_clip = {h.name: h for h in video_originals}
    for transform, vfn in tqdm(VIDEO_TRANSFORMS.items(), "video copies"):
        rows.append(Row("video", transform, [(hashed(n, vfn(b), decode), by_clip[n].sha) for n, b in clips.items()]))
    others = DISTINCT_PANS[:1] if args.quick else DISTINCT_PANS
    rows.append(Row("video", "distinct videos", [(hashed(n, pan(n), decode), None) for n in others]))
    # Face swaps: the same pan over the same scene, the face replaced by another (the cat's) in the same box.
    portrait = picture("astronaut")
    x, y, w, h = (int(v) for v in create_detector(faces).detect(portrait)[0].box)
    cat = np.ascontiguousarray(picture("chelsea")[20:250, 120:340])
    rows.append(Row("video", "face swap: portrait", [(hashed("swap", pan_of(paste(portrait, cat, (x, y, w, h))),
                                                             decode), by_clip["astronaut"].sha)], expect_match=False))
    scene = picture("rocket")
    box = (scene.shape[1] // 3, scene.shape[0] // 3, scene.shape[0] // 8, scene.shape[0] // 8)  # 1/8 of the height
    small = hashed("face in a scene", pan_of(paste(scene, portrait[y:y + h, x:x + w], box)), decode, faces)
    video_originals.append(small)
    rows.append(Row("video", "face swap: small face, scene", [(hashed("swap small", pan_of(paste(scene, cat, box)),
                                                                      decode), small.sha)], expect_match=False))

    cost = [] if args.quick else [hashed("1080p 4 s", moving_face_video(face, VideoSpec("1080p", 4.0, noise=24)),
                                         decode, faces)]
    return still_originals, video_originals, rows, cost


def pairs_false(originals: list[Hashed], settings: NearDuplicateSettings) -> tuple[int, int]:
    """(distinct original pairs, how many of them match)."""
    n = hits = 0
    for i, a in enumerate(originals):
        for b in originals[i + 1:]:
            n += 1
            hits += match(a.hashes.usable(settings.min_quality), b.hashes, b.sha, settings) is not None
    return n, hits


def report(args: argparse.Namespace, stills: list[Hashed], videos: list[Hashed], rows: list[Row],
           cost: list[Hashed], settings: NearDuplicateSettings) -> str:
    lines = [f"dfmod near-duplicate bench ({'quick' if args.quick else 'full'}): PDQ distance <= "
             f"{settings.max_distance}, quality >= {settings.min_quality}, video match shares >= "
             f"{settings.match_pct:g} % / {settings.query_match_pct:g} %; {len(stills)} original stills, "
             f"{len(videos)} original videos", "",
             f"  {'kind':<6} {'transform':<30} {'copies':>6} {'bits':>5} {'recall':>8} {'false matches':>14}"]
    for row in rows:
        originals = stills if row.kind == "still" else videos
        copies, right, wrong = row.score(originals, settings)
        queries = len(row.queries)
        recall = f"{100 * right / copies:6.1f} %" if copies else "       -"
        bits = row.bits(originals) if any(own is not None for _, own in row.queries) else None
        median = f"{bits:5.0f}" if bits is not None else "    -"
        lines.append(f"  {row.kind:<6} {row.transform:<30} {copies:>6} {median} {recall:>8} {wrong:>6} of {queries:<5}")
    for kind, originals in (("still", stills), ("video", videos)):
        flat = [o.name for o in originals if not len(o.hashes.usable(settings.min_quality).hashes)]
        if flat:
            lines.append(f"  {kind} originals with no frame of quality >= {settings.min_quality} (never matched): "
                         + ", ".join(flat))
    lines += ["", "  distance sweep (all copies; false: queries matched to the wrong/any original, and pairs of "
              "originals that match)",
              f"  {'max bits':>8} {'still recall':>13} {'video recall':>13} {'false queries':>14} {'false pairs':>12}"]
    for d in SWEEP:
        s = settings.model_copy(update={"max_distance": d})
        recall = {"still": [0, 0], "video": [0, 0]}
        wrong_queries = total_queries = 0
        for row in rows:
            copies, right, wrong = row.score(stills if row.kind == "still" else videos, s)
            recall[row.kind][0] += right
            recall[row.kind][1] += copies
            wrong_queries += wrong
            total_queries += len(row.queries)
        n_s, f_s = pairs_false(stills, s)
        n_v, f_v = pairs_false(videos, s)
        lines.append(f"  {d:>8} {100 * recall['still'][0] / max(1, recall['still'][1]):>11.1f} % "
                     f"{100 * recall['video'][0] / max(1, recall['video'][1]):>11.1f} % "
                     f"{wrong_queries:>6} of {total_queries:<5} {f_s + f_v:>4} of {n_s + n_v:<5}")
    lines += ["", "  CPU per media, one thread (ms): decode, PDQ of every sampled frame, face detection + alignment",
              f"  {'media':<22} {'frames':>6} {'decode':>8} {'hashing':>8} {'faces':>8} {'hash/faces':>11}"]
    groups = [("still (mean)", stills), (f"video {2 if args.quick else 4} s (mean)", videos)]
    groups += [(c.name, [c]) for c in cost]
    for label, items in groups:
        decode_ms, hash_ms, faces_ms = (1000 * float(np.mean([getattr(i, a) for i in items]))
                                        for a in ("decode_s", "hash_s", "faces_s"))
        frames = float(np.mean([i.frames for i in items]))
        lines.append(f"  {label:<22} {frames:>6.0f} {decode_ms:>8.1f} {hash_ms:>8.2f} {faces_ms:>8.1f} "
                     f"{hash_ms / max(1e-9, faces_ms):>10.1%}")
    lines.append("  a near-duplicate answer (mode on) saves the faces column and the inference for each matched copy")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few small items (CI)")
    parser.add_argument("--max-distance", type=int, help="PDQ bits (default: the setting's default)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # CPU per media on one thread, as a media thread spends it
    settings = NearDuplicateSettings()
    if args.max_distance is not None:
        settings = settings.model_copy(update={"max_distance": args.max_distance})
    stills, videos, rows, cost = build(args)
    print(report(args, stills, videos, rows, cost, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
