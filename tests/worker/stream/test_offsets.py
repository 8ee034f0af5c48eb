"""Offset tracking: commit only past contiguously acknowledged records, per partition, thread-safely."""

from __future__ import annotations

import random
import threading

from kafka import TopicPartition

from worker.stream.offsets import OffsetTracker

TP0 = TopicPartition("media.events", 0)
TP1 = TopicPartition("media.events", 1)


def test_nothing_to_commit_before_any_ack() -> None:
    t = OffsetTracker()
    for off in range(100, 105):
        t.track(TP0, off)
    assert t.committable() == {}
    assert t.pending(TP0) == 5 and t.in_flight() == 5


def test_out_of_order_acks_and_gap_holds_commit_back() -> None:
    t = OffsetTracker()
    for off in range(10, 16):
        t.track(TP0, off)
    t.ack(TP0, 12)
    t.ack(TP0, 11)
    assert t.committable() == {}          # 10 still in flight: nothing past it may be committed
    t.ack(TP0, 10)
    assert t.committable() == {TP0: 13}   # 10, 11, 12 done; 13 is the next to read
    t.mark_committed({TP0: 13})
    assert t.committable() == {}          # not advanced since the commit
    t.ack(TP0, 15)
    assert t.committable() == {}          # 13 and 14 still in flight
    t.ack(TP0, 14)
    t.ack(TP0, 13)
    assert t.committable() == {TP0: 16}
    assert t.pending(TP0) == 0


def test_offset_gaps_in_the_log_are_not_waited_for() -> None:
    # Compaction / transaction markers: offsets taken need not be consecutive.
    t = OffsetTracker()
    for off in (5, 9, 20):
        t.track(TP0, off)
    t.ack(TP0, 5)
    assert t.committable() == {TP0: 9}
    t.ack(TP0, 20)
    t.ack(TP0, 9)
    assert t.committable() == {TP0: 21}


def test_partitions_are_independent() -> None:
    t = OffsetTracker()
    for off in range(3):
        t.track(TP0, off)
        t.track(TP1, 100 + off)
    t.ack(TP1, 100)
    t.ack(TP1, 101)
    t.ack(TP0, 1)
    assert t.committable() == {TP1: 102}
    assert t.pending(TP0) == 2 and t.pending(TP1) == 1 and t.pending() == 3
    t.ack(TP0, 0)
    assert t.committable() == {TP0: 2, TP1: 102}
    t.mark_committed({TP1: 102})
    assert t.committable() == {TP0: 2}


def test_plain_tuples_are_normalised_to_topic_partitions() -> None:
    t = OffsetTracker()
    t.track(("media.events", 0), 7)
    assert t.ack(TP0, 7)
    out = t.committable()
    assert out == {TP0: 8}
    assert all(isinstance(tp, TopicPartition) for tp in out)
    t.mark_committed({("media.events", 0): 8})
    assert t.committable() == {}


def test_unknown_and_duplicate_acks_are_ignored() -> None:
    t = OffsetTracker()
    t.track(TP0, 1)
    assert not t.ack(TP0, 2)
    assert not t.ack(TP1, 1)
    assert t.ack(TP0, 1)
    assert not t.ack(TP0, 1)
    assert t.committable() == {TP0: 2}


def test_revoke_forgets_partitions_and_late_acks() -> None:
    t = OffsetTracker()
    for off in range(4):
        t.track(TP0, off)
        t.track(TP1, off)
    t.revoke([TP0])
    assert t.pending(TP0) == 0 and t.in_flight() == 4
    assert not t.ack(TP0, 0)              # a late ack for a lost partition
    t.ack(TP1, 0)
    assert t.committable() == {TP1: 1}
    t.mark_committed({TP0: 3})            # ignored: no longer ours
    assert TP0 not in t.committable()
    # Re-assigned later: starts afresh from where the consumer resumes.
    t.track(TP0, 2)
    assert t.committable() == {TP1: 1}
    t.ack(TP0, 2)
    assert t.committable() == {TP0: 3, TP1: 1}


def test_redelivered_offset_below_commit_does_not_move_commit_backwards() -> None:
    t = OffsetTracker()
    for off in range(5):
        t.track(TP0, off)
        t.ack(TP0, off)
    t.mark_committed(t.committable())
    t.track(TP0, 2)                       # a seek back re-delivers offset 2
    assert t.committable() == {}
    t.ack(TP0, 2)
    assert t.committable() == {}          # position 5 again, already committed
    t.track(TP0, 5)
    t.ack(TP0, 5)
    assert t.committable() == {TP0: 6}


def test_concurrent_track_and_ack() -> None:
    t = OffsetTracker()
    parts = [TopicPartition("media.events", p) for p in range(4)]
    per_part = 2000
    for tp in parts:
        for off in range(per_part):
            t.track(tp, off)
    work = [(tp, off) for tp in parts for off in range(per_part)]
    random.Random(7).shuffle(work)
    chunks = [work[i::8] for i in range(8)]
    seen: list[dict[TopicPartition, int]] = []

    def acker(items: list[tuple[TopicPartition, int]]) -> None:
        for tp, off in items:
            assert t.ack(tp, off)

    def committer(stop: threading.Event) -> None:
        while not stop.is_set():
            out = t.committable()
            seen.append(out)
            t.mark_committed(out)

    stop = threading.Event()
    threads = [threading.Thread(target=acker, args=(c,)) for c in chunks]
    watcher = threading.Thread(target=committer, args=(stop,))
    watcher.start()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    stop.set()
    watcher.join(timeout=30)
    final = t.committable()
    seen.append(final)
    t.mark_committed(final)
    assert t.in_flight() == 0
    last = {tp: max([s[tp] for s in seen if tp in s], default=0) for tp in parts}
    assert last == {tp: per_part for tp in parts}
    # Commits only ever move forwards.
    for tp in parts:
        positions = [s[tp] for s in seen if tp in s]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_an_answer_from_before_a_revocation_never_acks_the_redelivery() -> None:
    t = OffsetTracker()
    old = t.track(TP0, 5)
    t.revoke([TP0])
    new = t.track(TP0, 5)                 # the same offset, delivered again after a re-assignment
    assert new != old and not t.owns(TP0, old) and t.owns(TP0, new)
    assert not t.ack(TP0, 5, old)         # the stale answer: ignored
    assert t.committable() == {} and t.unacked(TP0) == [5]
    assert t.ack(TP0, 5, new)
    assert t.committable() == {TP0: 6}


def test_a_retained_partition_keeps_its_state_when_another_is_revoked() -> None:
    t = OffsetTracker()
    for off in (5, 6, 7):
        t.track(TP1, off)
    t.ack(TP1, 6)
    t.ack(TP1, 7)
    t.revoke([TP0])
    assert t.committable() == {}, "offset 5 is still in flight: nothing past it may be committed"
    t.track(TP1, 8)
    assert t.unacked(TP1) == [5, 8]
    t.ack(TP1, 5)
    assert t.committable() == {TP1: 8}
