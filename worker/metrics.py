"""Prometheus metrics of the worker. Names are part of the operations contract (docs/deploy.md alerts use them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
PAUSED = Gauge("dfmod_paused", "1 while the consumer has paused its partitions for backpressure")
CACHE = Counter("dfmod_cache_requests_total", "Verdict cache look-ups", ["result"])
BATCH_SIZE = Histogram(
    "dfmod_batch_size", "Faces per inference request", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
INFER_SECONDS = Histogram(
    "dfmod_infer_seconds", "Inference request round trip", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
)
PUBLISH_RETRIES = Counter("dfmod_publish_retries_total", "Verdict/DLQ sends retried after a broker error")
COMMITS = Counter("dfmod_commits_total", "Offset commits")

# -- reliability (issue 8): retries, outages, redeliveries ---------------------------------------------
INFER_RETRIES = Counter("dfmod_inference_retries_total", "Inference requests retried while the backend was failing")
BREAKER_OPEN = Gauge(
    "dfmod_dependency_down", "1 while a dependency the verdict needs is failing (no new work is taken)", ["dependency"]
)
ITEM_RETRIES = Counter("dfmod_item_retries_total", "Events sent to the retry topic after a transient failure")
CRASH_GUARD = Counter(
    "dfmod_crash_guard_total", "Records dead-lettered unprocessed: in flight each time a worker died"
)
