"""Prometheus metrics of the worker. Names are part of the operations contract (docs/deploy.md alerts use them)."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from kafka import TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from worker.core.contracts import ModelInfo, VerdictData
from worker.core.version import PIPELINE_VERSION, __version__

log = logging.getLogger(__name__)

EVENTS = Counter("dfmod_events_total", "Events answered, by verdict status", ["status"])
ERRORS = Counter("dfmod_errors_total", "Non-ok verdicts by error code", ["code"])
DLQ = Counter("dfmod_dlq_total", "Records sent to the dead-letter topic")
STAGE_SECONDS = Histogram(
    "dfmod_stage_seconds",
    "Wall time per pipeline stage",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
EVENT_SECONDS = Histogram(
    "dfmod_event_seconds",
    "Consume-to-verdict-ack latency per event",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
IN_FLIGHT = Gauge("dfmod_in_flight", "Events taken from Kafka and not yet acknowledged")
FACES_IN_FLIGHT = Gauge(
    "dfmod_faces_in_flight", "Face crops handed to the micro-batcher and not yet scored (bound: max_faces_in_flight)"
)
PAUSED = Gauge("dfmod_paused", "1 while the consumer has paused its partitions for backpressure")
CACHE = Counter("dfmod_cache_requests_total", "Verdict cache look-ups", ["result"])
NEAR_DUPLICATES = Counter(
    "dfmod_near_duplicates_total",
    "Near-duplicate look-ups, by outcome: answered (earlier verdict reused), tagged (match reported, scored), miss",
    ["outcome"],
)
HASH_LIST_MATCHES = Counter(
    "dfmod_hash_list_matches_total", "Media matching an operator's hash list, by the list's label and the mode",
    ["label", "mode"],
)
CACHE_AVAILABLE = Gauge("dfmod_cache_available",
                        "1 while Redis answered the last look-up, 0 while it fails (refused credentials or TLS, "
                        "down): verdicts are then scored uncached")
BATCH_SIZE = Histogram(
    "dfmod_batch_size", "Faces per inference request", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
INFER_SECONDS = Histogram(
    "dfmod_infer_seconds", "Inference request round trip", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
)
PUBLISH_RETRIES = Counter("dfmod_publish_retries_total", "Verdict/DLQ sends retried after a broker error")
COMMITS = Counter("dfmod_commits_total", "Offset commits")
TRANSACTIONS = Counter("dfmod_transactions_total", "Exactly-once transactions, by outcome (committed, aborted)",
                       ["outcome"])

# -- reliability: retries, outages, redeliveries ---------------------------------------------
INFER_RETRIES = Counter("dfmod_inference_retries_total", "Inference requests retried while the backend was failing")
BREAKER_OPEN = Gauge(
    "dfmod_dependency_down", "1 while a dependency the verdict needs is failing (no new work is taken)", ["dependency"]
)
ITEM_RETRIES = Counter("dfmod_item_retries_total", "Events sent to the retry topic after a transient failure")
CRASH_GUARD = Counter(
    "dfmod_crash_guard_total", "Records dead-lettered unprocessed: in flight each time a worker died"
)
# -- what an operator looks at first: outcomes, score drift, backlog, what is running (worker/stream/loop.py) --------
VERDICTS = Counter(
    "dfmod_verdicts_total", "Verdicts published, by status, label and error code ('' when none)",
    ["status", "label", "code"],
)
MEDIA_SCORE = Histogram(
    "dfmod_media_score",
    "Media-level fake probability of ok verdicts (cached ones included); a shifting shape means drift",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
CONSUMER_LAG = Gauge(
    "dfmod_consumer_lag",
    "Records between this worker's consumer position and the end offset, per assigned partition",
    ["topic", "partition"],
)
IN_FLIGHT_LIMIT = Gauge("dfmod_in_flight_limit", "settings.max_in_flight: dfmod_in_flight at this value is saturation")
BUILD_INFO = Gauge("dfmod_build_info", "Always 1; the labels say what runs", ["version", "pipeline_version"])
MODEL_INFO = Gauge(
    "dfmod_model_info", "Always 1; the served model (weights: provenance or checkpoint hash)",
    ["model", "model_version", "weights", "threshold", "preprocessing_version"],
)
BUILD_INFO.labels(__version__, PIPELINE_VERSION).set(1)


def observe_verdict(data: VerdictData) -> None:
    """Count one published verdict (status, label, code) and, when it has one, its media score."""
    code = data.error.code.value if data.error is not None else ""
    EVENTS.labels(data.status).inc()
    if code:
        ERRORS.labels(code).inc()
    VERDICTS.labels(data.status, data.label or "", code).inc()
    if data.status == "ok" and data.score is not None:
        MEDIA_SCORE.observe(data.score)


def set_model_info(model: ModelInfo) -> None:
    MODEL_INFO.clear()  # one served model per worker: a reload replaces, never adds, the series
    MODEL_INFO.labels(model.name, model.version, model.weights, f"{model.threshold:g}",
                      model.preprocessing_version).set(1)


class LagSource(Protocol):
    def lag(self) -> dict[TopicPartition, int]: ...


class _LagReporter:
    """Refreshes `dfmod_consumer_lag` at most every `every_s` (end offsets cost a broker round trip)."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self._due = 0.0
        self._shown: set[tuple[str, str]] = set()

    def __call__(self, source: LagSource) -> None:
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + self.every_s
        try:
            lag = source.lag()
        except Exception as exc:  # a broker hiccup must not stop the consume loop; the next turn retries
            log.debug("consumer lag unavailable: %s", exc)
            return
        shown = {(tp.topic, str(tp.partition)) for tp in lag}
        for gone in self._shown - shown:  # revoked partitions: drop their series instead of freezing them
            CONSUMER_LAG.remove(*gone)
        for tp, behind in lag.items():
            CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(behind)
        self._shown = shown


observe_lag = _LagReporter()
