"""Every worker setting, in one place.

Environment variables use the prefix ``DFMOD_`` and ``__`` between levels, for example
``DFMOD_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or ``DFMOD_FACES__BACKEND=scrfd``. Lists are JSON
(``DFMOD_FETCH__ALLOW_HOSTS='["10.0.0.0/8"]'``). `dfmod settings` prints the effective values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _readable_file(path: str) -> str:
    """A path setting that is set must name a file: say so at start-up, not at the first connection."""
    if path and not Path(path).is_file():
        raise ValueError(f"no such file: {path}")
    return path


#: How video frames are picked: the paper's exact even spacing, or the opt-in approximate keyframe mode.
Sampling = Literal["exact", "keyframes"]

Scheme = Literal["http", "https", "s3", "file"]


class KafkaSettings(BaseModel):
    """Broker connection, topics and consumer-group behaviour."""

    bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "media.events"
    verdicts_topic: str = "media.verdicts"
    dlq_topic: str = "media.events.dlq"
    #: Events whose origin failed transiently wait here for their next attempt (retry-topic convention).
    retry_topic: str = "media.events.retry"
    group_id: str = "dfmod-worker"
    client_id: str = "dfmod-worker"
    #: Static membership (KIP-345): a stable name per pod (e.g. the StatefulSet pod name). A restarted
    #: member with the same name takes its partitions back without a rebalance. Empty: dynamic member.
    group_instance_id: str | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = 32
    session_timeout_ms: int = 30_000
    #: How often the consumer refreshes topic metadata (kafka-python's default is 5 min). A group whose
    #: leader joined before a new topic's partitions had leaders assigns nothing until its next refresh
    #: ("No partition metadata" from the sticky assignor); a refresh that finds them triggers a rejoin. It
    #: also picks up partitions added to the events topic within this time.
    metadata_max_age_ms: int = 30_000
    max_poll_interval_ms: int = 300_000
    commit_interval_s: float = 1.0
    #: On a revocation, how long the loop waits for the revoked partitions' in-flight work before it
    #: commits what is done and lets them go (the rest is redone by the next owner).
    revoke_wait_s: float = 10.0
    #: How long `dfmod worker` start-up waits for the brokers to answer before it exits (code 15).
    ready_timeout_s: float = 60.0
    #: The broker's `message.max.bytes`: producers' max request size, and the cap on DLQ payloads.
    max_message_bytes: int = 1_048_576
    #: The producer's `linger.ms` (how long a send waits to join a batch) and `retries` (re-sends of a failed
    #: request inside the producer, within its 120 s delivery timeout).
    producer_linger_ms: int = Field(default=5, ge=0)
    producer_retries: int = Field(default=5, ge=0)
    #: A send the producer gave up on is sent again by the loop after this back-off (doubling, capped):
    #: a broker outage delays verdicts, it never drops them.
    resend_backoff_initial_s: float = Field(default=1.0, gt=0)
    resend_backoff_max_s: float = Field(default=30.0, gt=0)
    #: Exactly-once verdicts (Kafka transactions, KIP-98/447): each answer is published in one transaction with
    #: the consumed offsets of its partition's answered prefix, so a `read_committed` reader sees every event
    #: answered once, even across kill -9. Off: at-least-once (a crash re-publishes what was answered since the
    #: last commit). Needs brokers >= 2.5 and a `transactional.id` ACL where ACLs are on.
    exactly_once: bool = False
    #: The producer's `transactional.id` (exactly-once mode): stable per pod, so a restarted worker aborts its
    #: predecessor's open transaction at once. Empty: `<group_id>-<group_instance_id>` with static membership,
    #: else `<group_id>-<hostname>-<pid>` (a restart then leaves the old transaction to time out).
    transactional_id: str | None = None
    #: Exactly-once mode: how often the loop commits a transaction, and after how many held answers sooner.
    #: Verdicts become visible to `read_committed` readers at each commit.
    transaction_interval_ms: int = Field(default=100, ge=1)
    transaction_max_records: int = Field(default=500, ge=1)
    #: Exactly-once mode: the broker aborts a transaction open longer than this (a worker that died mid-one);
    #: until then `read_committed` readers of its partitions wait. Must not exceed the broker's
    #: `transaction.max.timeout.ms` (15 min by default).
    transaction_timeout_ms: int = Field(default=10_000, ge=1000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    #: OAUTHBEARER reads its token from `sasl_oauth_token_file` at every connection (a file your identity
    #: provider's agent or a projected service-account token keeps fresh); AWS_MSK_IAM signs with the AWS
    #: credentials botocore finds (IRSA, instance role, environment; needs `botocore`, e.g. the s3 extra).
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "AWS_MSK_IAM"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_oauth_token_file: str = ""
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    _token_file = field_validator("sasl_oauth_token_file")(_readable_file)

    @model_validator(mode="after")
    def _oauth_token(self) -> KafkaSettings:
        if self.sasl_mechanism == "OAUTHBEARER" and not self.sasl_oauth_token_file:
            raise ValueError("sasl_mechanism OAUTHBEARER needs DFMOD_KAFKA__SASL_OAUTH_TOKEN_FILE")
        return self


class FetchSettings(BaseModel):
    """Where media may come from, and how much of it we accept (the SSRF guard lives here)."""

    max_bytes: int = 200 * 1024 * 1024
    #: Decoded size of `data.inline`; the event must also fit the broker's message limit.
    max_inline_bytes: int = 8 * 1024 * 1024
    timeout_s: float = 20.0
    allow_schemes: list[Scheme] = Field(default_factory=lambda: list[Scheme](["https", "http"]))
    #: Roots under which file:// URIs may point (only when "file" is in allow_schemes).
    file_roots: list[Path] = Field(default_factory=list)
    #: Hosts or CIDRs let through although they resolve to loopback, link-local or private addresses.
    allow_hosts: list[str] = Field(default_factory=list)
    s3_endpoint_url: str | None = None


class DecodeSettings(BaseModel):
    """Decoding limits and frame sampling (the paper samples 32 evenly spaced frames per video)."""

    frames: int = 32
    max_pixels: int = 8192 * 8192
    max_duration_s: float = 3600.0
    max_decoded_frames: int = 200_000
    timeout_s: float = 60.0
    #: Fetch the sampled frames by seeking to the keyframe before each (same frames as a full decode, cost
    #: bounded by the samples, not the duration); False forces the single sequential pass (worker/media/decode.py).
    seek: bool = True
    #: exact (default): the paper's N evenly spaced frames. keyframes (approximate, opt-in): on the seeking
    #: path, a sample alone in its keyframe interval is replaced by that interval's keyframe (at most one
    #: interval, 2 s in common encodes, earlier), so a long video costs about N keyframe decodes; samples
    #: that share an interval stay exact, so short videos are unchanged. The verdict says which was used
    #: (`sampling`), and the cache keeps the two apart (`worker.core.version.pipeline_version`).
    sampling: Sampling = "exact"
    allowed_containers: list[str] = Field(
        default_factory=lambda: [
            "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "mpegts", "flv", "gif",
            "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "image2",
        ]
    )
    allowed_codecs: list[str] = Field(
        default_factory=lambda: [
            "h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "gif",
            "png", "jpeg", "webp", "bmp", "tiff", "rawvideo",
        ]
    )


class FaceSettings(BaseModel):
    """Face detector backend and crop geometry (DESIGN.md section 3: 5-point alignment, scale 1.3, 224x224)."""

    #: yunet (default, Apache-2.0 weights shipped in the package), scrfd (insightface weights for
    #: non-commercial research only, which the user supplies), haar (no landmarks; needs Debian's opencv-data).
    backend: Literal["yunet", "scrfd", "haar"] = "yunet"
    #: Folder holding the detector's weights. Unset: the YuNet weights shipped inside the package
    #: (worker/faces/weights). Set: only this folder is searched (SCRFD's weights must be put here).
    weights_dir: Path | None = None
    yunet_file: str = "yunet_n_dynamic.onnx"
    scrfd_file: str = "scrfd_500m_bnkps.onnx"
    score_threshold: float = 0.6
    nms_threshold: float = 0.3
    #: Frames are downscaled so their longest side is at most this before detection.
    detect_max_side: int = 640
    #: Faces scored per frame: 32 covers a typical group photo. Above it the largest are kept, and the
    #: verdict's `faces_dropped` counts the rest.
    max_faces_per_frame: int = 32
    #: Faces scored per media item (all frames together), largest first: bounds the aligned crops held for
    #: one item (256 x 224 x 224 x 3 bytes = 37 MiB) and its inference cost.
    max_faces_per_media: int = 256
    #: Smallest face side scored, in source pixels. 10 px is YuNet's reliable lower bound ("faces of around
    #: 10x10 to 300x300 pixels", opencv_zoo models/face_detection_yunet/README.md); SCRFD-500M and YuNet
    #: both find every face of an 8x8 mosaic of the test portrait (faces 9-10 px). Faces are detected on the
    #: frame downscaled to detect_max_side, so on larger frames the smallest face found grows with the factor.
    min_face_px: int = 10
    crop_size: int = 224
    crop_scale: float = 1.3


class BatchSettings(BaseModel):
    """Micro-batching of face crops across events, so the GPU sees full batches."""

    max_size: int = 32
    max_delay_ms: float = 10.0


class TritonSettings(BaseModel):
    """The inference server."""

    url: str = "127.0.0.1:8001"
    model_name: str = "deepfake_clip"
    #: Empty means the server's latest ready version.
    model_version: str = ""
    max_in_flight: int = 4
    timeout_s: float = 30.0
    #: How long start-up waits for Triton to answer and the model to become ready (exit codes 12, 13).
    ready_timeout_s: float = 120.0
    #: gRPC over TLS. `tls_ca_file`: the CA bundle that signed the server's certificate (empty: the system's);
    #: `tls_cert_file` + `tls_key_file`: this worker's client certificate where Triton requires one (mutual TLS).
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: How requests spread over Triton servers. `pick_first`: one connection, to the first address `url`
    #: resolves to. `round_robin`: a connection to every address, requests taken in turn; give it a name
    #: that resolves to each server (`dns:///triton-pods:8001`, a headless Service), so a Triton rollout or
    #: a second GPU does not leave every worker on one pod. gRPC resolves the name again whenever a
    #: connection drops (a pod went away); a pod added while all others stay up is found at the next drop.
    load_balancing: Literal["pick_first", "round_robin"] = "pick_first"

    _files = field_validator("tls_ca_file", "tls_cert_file", "tls_key_file")(_readable_file)

    @model_validator(mode="after")
    def _tls_together(self) -> TritonSettings:
        if not self.tls and (self.tls_ca_file or self.tls_cert_file or self.tls_key_file):
            raise ValueError("tls_*_file is set but tls is false: set DFMOD_TRITON__TLS=true")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together (a client certificate and its key)")
        return self


class RetrySettings(BaseModel):
    """How transient failures are retried (worker.core.retry): they delay a verdict, they do not replace it."""

    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    #: While a dependency the verdict needs (Triton) is down, in-flight work waits this long for it
    #: before it is answered `error`; meanwhile the worker takes no new work.
    dependency_deadline_s: float = 900.0
    #: Attempts per event when its origin fails transiently (HTTP 5xx/429, connection refused), the
    #: first included; between them the event waits on the retry topic.
    item_attempts: int = 3
    #: Delay before attempt 2, 3, ... (the last value repeats).
    item_delays_s: list[float] = Field(default_factory=lambda: [10.0, 60.0])
    #: Redeliveries of one record after which it is dead-lettered unprocessed: it was in flight each
    #: time a worker died (crash-loop guard, worker.stream.crash_guard). 0 disables the guard.
    max_deliveries: int = 3
    #: How long the crash-loop guard keeps a record's delivery count in Redis after its last delivery.
    guard_ttl_s: int = Field(default=7 * 86400, ge=1)
    #: While a dependency (Triton) is down, how often the loop asks whether it is back.
    probe_interval_s: float = Field(default=2.0, gt=0)


class CacheSettings(BaseModel):
    """Redis verdict cache. An optimisation only: Redis down means slower, never wrong or stuck."""

    enabled: bool = True
    #: `redis://` or, over TLS, `rediss://` (then `tls_*` apply).
    url: str = "redis://127.0.0.1:6379/0"
    #: An ACL user (Redis 6+); empty: the `default` user. `password` is that user's.
    username: str = ""
    password: SecretStr | None = None
    #: TLS (`rediss://` only): the CA bundle of the server's certificate (empty: the system's), and a client
    #: certificate + key where the server requires one (`tls-auth-clients yes`).
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    ttl_s: int = 30 * 24 * 3600
    key_prefix: str = "dfmod:verdict:"
    socket_timeout_s: float = 0.25
    #: After a failure, skip Redis for this long instead of paying the timeout on every event.
    retry_after_s: float = 5.0

    _files = field_validator("tls_ca_file", "tls_cert_file", "tls_key_file")(_readable_file)

    @model_validator(mode="after")
    def _tls_together(self) -> CacheSettings:
        if not self.url.startswith("rediss://") and (self.tls_ca_file or self.tls_cert_file or self.tls_key_file):
            raise ValueError("tls_*_file is set but url is not rediss:// (TLS)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together (a client certificate and its key)")
        return self


class NearDuplicateSettings(BaseModel):
    """Perceptual-hash near-duplicates (PDQ per still and per sampled frame; vPDQ's matching for video).

    The defaults come from `make bench-neardup` (deploy/local/neardup_bench.py, numbers in docs/neardup-bench.md):
    `tag_only` because a face swapped into an otherwise unchanged video is itself a near-duplicate of its source.
    """

    #: off: no look-up; on: a match is answered with the earlier verdict, without detection or inference;
    #: tag_only: the match is reported in the verdict (`near_duplicate`) and the media is still scored.
    mode: Literal["off", "on", "tag_only"] = "tag_only"
    #: Two frames match within this many of PDQ's 256 bits (PDQ's customary threshold is 31).
    max_distance: int = Field(default=31, ge=0, le=128)
    #: Frames with a PDQ quality below this are not compared (flat frames all hash alike); vPDQ's F.
    min_quality: int = Field(default=50, ge=0, le=100)
    #: Video: at least this share (%) of the earlier video's frames must match a frame of this one (vPDQ's P_c),
    match_pct: float = Field(default=80.0, ge=0, le=100)
    #: ... and this share (%) of this video's frames one of the earlier video's (vPDQ's P_q).
    query_match_pct: float = Field(default=80.0, ge=0, le=100)
    #: Index buckets per hash: 16 bands of 16 bits. A match within 15 bits always shares a band; beyond, most do.
    bands: Literal[8, 16, 32] = 16
    #: At most this many candidate media are compared per look-up (the ones sharing the most bands).
    max_candidates: int = Field(default=64, ge=1)
    #: Hash lists (`dfmod hashlist import`): off; annotate (the verdict's `match`, the media still scored);
    #: decide (a match is answered with the list's label, no detection or inference).
    lists: Literal["off", "annotate", "decide"] = "annotate"


class WorkerSettings(BaseSettings):
    """Top-level settings of `dfmod worker` (and of `dfmod scan` for the stages they share)."""

    model_config = SettingsConfigDict(env_prefix="DFMOD_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    faces: FaceSettings = Field(default_factory=FaceSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    near_duplicate: NearDuplicateSettings = Field(default_factory=NearDuplicateSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)

    #: Events taken from Kafka and not yet answered; above it the consumer pauses its partitions
    #: (backpressure). High enough that, with one face per photo, the micro-batcher can fill every
    #: in-flight Triton request (triton.max_in_flight x batch.max_size = 128) while the CPU stages work on
    #: the next events; memory is bounded by the two size budgets below, not by this count.
    max_in_flight: int = 256
    #: Media bytes at once, bounded at two points with this one limit: the event records taken and not yet
    #: answered (above it the consumer pauses), and the media being decoded and detected, fetched or inline
    #: (a media thread waits for room; one item larger than this runs alone). Inline media counts at both,
    #: as it is held twice (the record, its decoded bytes): peak media memory is at most twice this.
    max_in_flight_bytes: int = 256 * 1024 * 1024
    #: Face crops (150 KB each) handed to the micro-batcher and not yet scored; a media thread with crops
    #: waits for room before it hands them over (one item with more faces runs alone).
    max_faces_in_flight: int = 512
    #: Threads that fetch, decode and detect (CPU-bound work in C code that releases the GIL). They never
    #: wait for inference: an item's crops go to the batcher and the thread takes the next item.
    media_threads: int = 4
    #: Threads that aggregate and write the cache once scores are back (quick work; Redis has a 0.25 s timeout).
    finish_threads: int = Field(default=2, ge=1)
    #: Wall-time budget for one media item, fetch to verdict.
    media_timeout_s: float = 120.0
    #: On SIGTERM, how long to wait for in-flight events before leaving them (unanswered, uncommitted)
    #: to the next owner. Keep it below the pod's terminationGracePeriodSeconds.
    drain_timeout_s: float = 30.0
    #: Every this many seconds the worker hands freed heap memory back to the OS (glibc `malloc_trim`,
    #: worker/obs/memory.py), so RSS follows what is in use rather than the busiest moment; 0 disables it.
    malloc_trim_interval_s: float = Field(default=10.0, ge=0)
    #: `/healthz` (liveness) fails when the consume loop has not turned for this long: a wedged worker restarts.
    liveness_stall_s: float = Field(default=60.0, gt=0)
    http_host: str = "0.0.0.0"
    http_port: int = 9100
    log_level: str = "INFO"
    source: str = "dfmod-worker"
