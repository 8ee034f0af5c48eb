"""Group membership on the real broker: joins that always finish, and a spare member that counts as ready."""

from __future__ import annotations

import time

from harness import Topics

from worker.core.settings import KafkaSettings
from worker.stream.consumer import EventConsumer


def _consumer(bootstrap: str, topics: Topics) -> EventConsumer:
    settings = KafkaSettings(bootstrap_servers=bootstrap, events_topic=topics.events, group_id=topics.group)
    return EventConsumer(settings, [topics.events, topics.retry])


def test_a_join_cut_short_by_poll_timeouts_still_completes(bootstrap: str) -> None:
    """kafka-python 3.0 stalls in REBALANCING when poll()'s timer expires mid-join (`finish_stalled_join`).

    Polls of 3 ms expire inside almost every join: without the fix each of these groups stays unassigned."""
    for _ in range(3):
        topics = Topics.fresh(bootstrap)  # just created: the first join meets the partitions' metadata late
        consumer = _consumer(bootstrap, topics)
        try:
            deadline = time.monotonic() + 20
            while not consumer.in_group() and time.monotonic() < deadline:
                consumer.poll(timeout_ms=3, max_records=1)
            assert consumer.in_group(), "the member never reached a stable assignment"
            # The first join can meet no partition metadata and assign nothing; the rejoin it triggers must
            # still complete, under the same short polls.
            while len(consumer._consumer.assignment()) < 8 and time.monotonic() < deadline:
                consumer.poll(timeout_ms=3, max_records=1)
            assert len(consumer._consumer.assignment()) == 8  # 4 events + 4 retry partitions
        finally:
            consumer.close()


def test_a_member_with_no_partition_is_in_the_group(bootstrap: str) -> None:
    """More replicas than partitions: the spare holds nothing yet must report ready (`in_group`)."""
    topics = Topics.fresh(bootstrap, partitions=1)  # events and retry: one partition each
    consumers = [_consumer(bootstrap, topics) for _ in range(3)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for consumer in consumers:
                consumer.poll(timeout_ms=100, max_records=1)
            sizes = sorted(len(c._consumer.assignment()) for c in consumers)
            if sizes == [0, 1, 1] and all(c.in_group() for c in consumers):
                break
        assert sorted(len(c._consumer.assignment()) for c in consumers) == [0, 1, 1]
        assert all(c.in_group() for c in consumers)
    finally:
        for consumer in consumers:
            consumer.close()
