"""`dfmod verdicts`: follow the verdict topic (no consumer group, so it never steals a worker's offsets)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaTimeoutError

from worker.core.settings import KafkaSettings
from worker.stream.kafka_config import KafkaUnavailable, bootstrap_failed, connection_config


def follow(
    settings: KafkaSettings,
    topic: str | None = None,
    from_beginning: bool = False,
    timeout_s: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield verdict CloudEvents as dicts; stop after `timeout_s` without a new record (None: never).

    `timeout_s` also bounds connecting (else the client's 30 s): no broker raises KafkaUnavailable.
    """
    topic = topic or settings.verdicts_topic
    connect_s = timeout_s if timeout_s is not None else 30.0
    try:
        # read_committed: with exactly-once workers, only verdicts whose transaction committed (each once);
        # at-least-once workers publish outside transactions, which read_committed reads as they come.
        consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, isolation_level="read_committed",
                                 bootstrap_timeout_ms=int(connect_s * 1000), **connection_config(settings))
    except KafkaTimeoutError as exc:
        raise bootstrap_failed(settings, connect_s, exc) from exc
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise KafkaUnavailable(f"Kafka at {settings.bootstrap_servers} has no topic {topic} "
                                   "(check DFMOD_KAFKA__VERDICTS_TOPIC)")
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
