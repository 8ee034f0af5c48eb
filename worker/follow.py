"""`dfmod verdicts`: follow the verdict topic (no consumer group, so it never steals a worker's offsets)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from worker.kafka_config import connection_config
from worker.settings import KafkaSettings


def follow(
    settings: KafkaSettings,
    topic: str | None = None,
    from_beginning: bool = False,
    timeout_s: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield verdict CloudEvents as dicts; stop after `timeout_s` without a new record (None: never)."""
    topic = topic or settings.verdicts_topic
    consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **connection_config(settings))
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        last = time.monotonic()
        while timeout_s is None or time.monotonic() - last < timeout_s:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    last = time.monotonic()
                    yield json.loads(record.value)
    finally:
        consumer.close()
