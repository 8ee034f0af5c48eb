"""The near-duplicate index in Redis, shared by every worker: PDQ frame hashes of media already judged.

Layout, per model digest (`cache.model_digest`: the same model and pipeline version as the verdict cache):

    <prefix>nd:<digest>:m:<media sha256>          the media's frame hashes (`MediaHashes.to_bytes`)
    <prefix>nd:<digest>:b<band>:<band value hex>  SET of media sha256 whose frames have that band value

Each 256-bit hash is cut into `bands` bands (16 of 16 bits by default). Two hashes within 15 bits always
agree on at least one band (pigeonhole), and hashes 16..31 bits apart usually do (at 31 bits, about 2 of 16
bands agree on average), so a look-up is one pipelined round trip of SMEMBERS (frames x bands, the mirrored
hashes too), then one of GETs for the `max_candidates` media sharing the most bands, then vPDQ's comparison
(`similar.match`) in numpy. Lookup cost grows with the bucket sizes: N indexed frames spread over 2^16 values
per band, so a query frame meets about bands x N / 65536 members (10 M frames: ~2,400; 1 B: ~250,000, when
`bands: 8` of 32 bits, ~2 per band, is the setting to use, at the price of recall beyond 7 bits). Memory is
about bands x 80 B per indexed frame (10 M frames, 16 bands: ~13 GB, a Redis Cluster shards the band keys
by slot); past that, a FAISS binary multi-index service is the next step (docs/DESIGN.md).

Everything goes through `VerdictCache.call`: the cache's breaker and timeouts, so Redis down means a miss
(the media is scored), never a wrong answer or a stall. Entries expire with the verdict cache's TTL; a band
member whose media record has expired is skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from worker.core.contracts import ModelInfo, NearDuplicate
from worker.core.settings import NearDuplicateSettings
from worker.scoring.cache import VerdictCache, model_digest
from worker.scoring.similar import MediaHashes, match

log = logging.getLogger(__name__)


class NearDuplicateIndex:
    """`lookup` the best earlier match of a media's hashes; `add` a judged media. Never raises."""

    def __init__(self, cache: VerdictCache, settings: NearDuplicateSettings, root: str,
                 ttl_s: int | None) -> None:
        """Keys under `root`; entries expire after `ttl_s` (None: never, for hash lists)."""
        self.cache, self.settings, self.ttl_s = cache, settings, ttl_s
        self._root = root
        self._width = 32 // settings.bands  # bytes per band

    @classmethod
    def for_model(cls, cache: VerdictCache, settings: NearDuplicateSettings, model: ModelInfo,
                  pipeline_version: str) -> NearDuplicateIndex:
        """The index of media judged under this model and pipeline version, expiring with their verdicts."""
        root = f"{cache.settings.key_prefix}nd:{model_digest(model, pipeline_version)}:"
        return cls(cache, settings, root, max(1, int(cache.settings.ttl_s)))

    def _bands(self, hashes: Any) -> list[str]:
        keys = []
        for row in hashes:
            raw = bytes(row)
            keys += [f"{self._root}b{b}:{raw[b * self._width:(b + 1) * self._width].hex()}"
                     for b in range(self.settings.bands)]
        return keys

    def _record(self, sha: str) -> str:
        return f"{self._root}m:{sha}"

    def lookup(self, query: MediaHashes, exclude: str | None = None) -> NearDuplicate | None:
        """The closest match among indexed media (`exclude`: the query's own sha256), or None."""
        usable = query.usable(self.settings.min_quality)
        if not len(usable.hashes):
            return None
        keys = self._bands(usable.hashes)
        if usable.mirrored is not None:
            keys += self._bands(usable.mirrored)

        def members(redis: Any) -> list[Any]:
            pipe = redis.pipeline(transaction=False)
            for key in keys:
                pipe.smembers(key)
            return pipe.execute()  # type: ignore[no-any-return]

        buckets = self.cache.call("near-duplicate SMEMBERS", members)
        if not buckets:
            return None
        shared = Counter(m.decode() if isinstance(m, bytes) else m for bucket in buckets for m in bucket)
        shared.pop(exclude or "", None)
        candidates = [sha for sha, _ in shared.most_common(self.settings.max_candidates)]
        if not candidates:
            return None
        records = self.cache.call("near-duplicate GET",
                                  lambda redis: redis.mget([self._record(sha) for sha in candidates]))
        best: NearDuplicate | None = None
        for sha, raw in zip(candidates, records or [], strict=False):
            if raw is None:  # expired meanwhile
                continue
            try:
                found = match(usable, MediaHashes.from_bytes(raw), sha, self.settings)
            except ValueError as exc:
                log.warning("unreadable near-duplicate record for %s, ignoring it: %s", sha, exc)
                continue
            if found is not None and (best is None or _better(found, best)):
                best = found
        return best

    def add(self, sha: str, hashes: MediaHashes) -> bool:
        """Index one media (its usable frames) under `sha`; False when Redis failed or nothing was usable."""
        usable = hashes.usable(self.settings.min_quality)
        if not len(usable.hashes):
            return False
        ttl = self.ttl_s

        def write(redis: Any) -> bool:
            pipe = redis.pipeline(transaction=False)
            pipe.set(self._record(sha), usable.to_bytes(), ex=ttl)
            for key in self._bands(usable.hashes):
                pipe.sadd(key, sha)
                if ttl is not None:
                    pipe.expire(key, ttl)
            pipe.execute()
            return True

        return bool(self.cache.call("near-duplicate SADD", write))


def _better(a: NearDuplicate, b: NearDuplicate) -> bool:
    return (min(a.match_pct, a.query_match_pct), -a.distance) > (min(b.match_pct, b.query_match_pct), -b.distance)
