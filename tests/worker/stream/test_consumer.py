"""The stand-in record for one kafka-python cannot decode; the rejoin that un-stalls a join kafka-python dropped;
the join whose answer kafka-python would throw away."""

from __future__ import annotations

from kafka.consumer.fetcher import ConsumerRecord
from kafka.coordinator.base import MemberState
from kafka.future import Future

from worker.stream.consumer import UNDECODABLE_HEADER, finish_stalled_join, keep_join_answer, undecodable_reason


def _record(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]) -> ConsumerRecord:
    return ConsumerRecord("t", 0, -1, 7, -1, -1, key, value, headers, None, -1, -1, -1)


def test_the_stand_in_record_carries_its_reason() -> None:
    assert undecodable_reason(_record(None, None, [(UNDECODABLE_HEADER, b"bad header key")])) == "bad header key"


def test_a_producer_record_with_bytes_is_never_taken_for_the_stand_in() -> None:
    assert undecodable_reason(_record(None, b"{}", [(UNDECODABLE_HEADER, b"x")])) is None
    assert undecodable_reason(_record(b"k", None, [(UNDECODABLE_HEADER, b"x")])) is None
    assert undecodable_reason(_record(None, None, [("other", b"x")])) is None


class _Coordinator:
    """The three members of kafka-python's coordinator that `finish_stalled_join` reads."""

    def __init__(self, state: str, need_rejoin: bool) -> None:
        self.state, self._need, self.requested = state, need_rejoin, 0

    def need_rejoin(self) -> bool:
        return self._need

    def request_rejoin(self) -> None:
        self.requested += 1


def test_a_rebalance_no_poll_will_drive_is_restarted() -> None:
    stalled = _Coordinator(MemberState.REBALANCING, need_rejoin=False)
    assert finish_stalled_join(stalled) and stalled.requested == 1


def test_a_join_kafka_python_still_drives_or_a_stable_member_is_left_alone() -> None:
    for coordinator in (_Coordinator(MemberState.REBALANCING, True), _Coordinator(MemberState.STABLE, False),
                        _Coordinator(MemberState.UNJOINED, True)):
        assert not finish_stalled_join(coordinator) and coordinator.requested == 0
    assert not finish_stalled_join(None)  # no group (manual assignment): nothing to do


class _Joining:
    """kafka-python's coordinator as `keep_join_answer` sees it: the task of the join in flight."""

    def __init__(self, task: Future | None) -> None:
        self._join_task = task


def test_a_join_that_finished_between_polls_is_still_read_not_sent_again() -> None:
    task = Future()
    coordinator = _Joining(task)
    assert keep_join_answer(coordinator)
    task.success(b"assignment")  # the network thread finishes the join while no poll awaits it
    wrapped = coordinator._join_task
    assert wrapped is not None and not wrapped.is_done, "kafka-python resends a JoinGroup for a done task"
    answers: list[object] = []
    wrapped.add_callback(answers.append)  # what kafka-python's wait_for does on the next poll
    assert answers == [b"assignment"]


def test_a_failed_join_reaches_kafka_python_and_a_task_is_wrapped_once() -> None:
    task = Future()
    coordinator = _Joining(task)
    assert keep_join_answer(coordinator) and not keep_join_answer(coordinator)
    task.failure(RuntimeError("rebalance in progress"))
    errors: list[BaseException] = []
    assert coordinator._join_task is not None
    coordinator._join_task.add_errback(errors.append)
    assert [str(e) for e in errors] == ["rebalance in progress"]
    assert not keep_join_answer(_Joining(None)) and not keep_join_answer(None)
