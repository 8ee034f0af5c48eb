"""vPDQ's comparison rules over PDQ frame hashes (no servers)."""

from __future__ import annotations

import numpy as np

from worker.core.settings import NearDuplicateSettings
from worker.media.pdq import PdqHash
from worker.scoring.similar import MediaHashes, match, pairwise

RNG = np.random.default_rng(7)


def random_hash() -> bytes:
    return RNG.integers(0, 256, 32, dtype=np.uint8).tobytes()


def flipped(raw: bytes, bits: int) -> bytes:
    """`raw` with its first `bits` bits inverted: exactly that PDQ distance away."""
    array = np.unpackbits(np.frombuffer(raw, np.uint8))
    array[:bits] ^= 1
    return np.packbits(array).tobytes()


def media(hashes: list[bytes], quality: int = 100, mirrored: list[bytes] | None = None) -> MediaHashes:
    frames = [PdqHash(h, quality, m) for h, m in zip(hashes, mirrored or [random_hash() for _ in hashes],
                                                       strict=True)]
    return MediaHashes.of(frames)


SETTINGS = NearDuplicateSettings(max_distance=31, match_pct=80, query_match_pct=80, min_quality=50)


def query(m: MediaHashes) -> MediaHashes:
    return m.usable(SETTINGS.min_quality)


def test_a_still_matches_within_the_distance_and_not_beyond() -> None:
    original = random_hash()
    near = match(query(media([flipped(original, 31)])), media([original]), "a" * 64, SETTINGS)
    assert near is not None and near.distance == 31 and near.media_sha256 == "a" * 64 and not near.mirrored
    assert match(query(media([flipped(original, 32)])), media([original]), "a" * 64, SETTINGS) is None


def test_a_mirrored_copy_matches_through_its_mirrored_hash() -> None:
    original = random_hash()
    copy = media([random_hash()], mirrored=[flipped(original, 4)])
    near = match(query(copy), media([original]), "b" * 64, SETTINGS)
    assert near is not None and near.mirrored and near.distance == 4


def test_a_video_needs_both_shares_of_frames_to_match() -> None:
    frames = [random_hash() for _ in range(10)]
    eight_of_ten = [flipped(f, 5) for f in frames[:8]] + [random_hash(), random_hash()]
    near = match(query(media(eight_of_ten)), media(frames), "c" * 64, SETTINGS)
    assert near is not None and near.match_pct == 80.0 and near.query_match_pct == 80.0 and near.distance == 5
    seven = [flipped(f, 5) for f in frames[:7]] + [random_hash() for _ in range(3)]
    assert match(query(media(seven)), media(frames), "c" * 64, SETTINGS) is None
    # a clip of the first half matches all of itself but only half of the earlier video
    assert match(query(media(frames[:5])), media(frames), "c" * 64, SETTINGS) is None


def test_low_quality_frames_are_never_compared() -> None:
    original = random_hash()
    assert match(query(media([original], quality=20)), media([original]), "d" * 64, SETTINGS) is None
    assert match(query(media([original])), media([original], quality=20), "d" * 64, SETTINGS) is None


def test_stored_form_round_trips_and_duplicates_count_once() -> None:
    frames = [random_hash(), random_hash()]
    stored = media([frames[0], frames[0], frames[1]]).usable(50)
    back = MediaHashes.from_bytes(stored.to_bytes())
    assert len(back.hashes) == 2 and (back.quality == 100).all()
    assert sorted(bytes(h) for h in back.hashes) == sorted(frames)
    assert (pairwise(back.hashes, back.hashes).diagonal() == 0).all()
