"""The outbox's count of held answers stays equal to what it holds through holds, commits and drops."""

from __future__ import annotations

from kafka import TopicPartition

from worker.stream.outbox import Outbox
from worker.stream.publisher import Send

TP0, TP1 = TopicPartition("media.events", 0), TopicPartition("media.events", 1)


def _send(tag: str) -> Send:
    def send(_publisher: object) -> None:
        pass
    send.__name__ = tag
    return send


def test_len_follows_holds_commits_and_drops() -> None:
    outbox = Outbox()
    for tp, offset, tag in [(TP0, 2, "a"), (TP0, 0, "b"), (TP0, 0, "b-dlq"), (TP1, 5, "c")]:
        outbox.hold(tp, offset, _send(tag))
    assert len(outbox) == 4
    assert [s.__name__ for s in outbox.ready({TP0: 3})] == ["b", "b-dlq", "a"], "offset order"
    outbox.forget_below({TP0: 1})
    assert len(outbox) == 2 and [s.__name__ for s in outbox.ready({TP0: 3, TP1: 6})] == ["a", "c"]
    outbox.drop([TP1, TopicPartition("media.events", 9)])
    assert len(outbox) == 1
    outbox.forget_below({TP0: 3})
    assert len(outbox) == 0 and outbox.ready({TP0: 10, TP1: 10}) == []
