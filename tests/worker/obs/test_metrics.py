"""worker/obs/metrics.py: the operator-facing series, fed as the service feeds them."""

from __future__ import annotations

from kafka import TopicPartition
from prometheus_client import REGISTRY

from worker.core.contracts import ErrorInfo, ModelInfo, VerdictData
from worker.core.errors import ErrorCode
from worker.core.version import PIPELINE_VERSION, __version__
from worker.obs import metrics


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_observe_verdict_counts_by_status_label_code_and_scores_ok_ones() -> None:
    before_fake = sample("dfmod_verdicts_total", status="ok", label="fake", code="")
    before_bad = sample("dfmod_verdicts_total", status="rejected", label="", code="decode_failed")
    before_scores = sample("dfmod_media_score_count")
    before_high = sample("dfmod_media_score_bucket", le="0.9")
    metrics.observe_verdict(VerdictData(status="ok", label="fake", score=0.93))
    metrics.observe_verdict(VerdictData(status="rejected",
                                        error=ErrorInfo(code=ErrorCode.DECODE_FAILED, message="corrupt")))
    assert sample("dfmod_verdicts_total", status="ok", label="fake", code="") == before_fake + 1
    assert sample("dfmod_verdicts_total", status="rejected", label="", code="decode_failed") == before_bad + 1
    assert sample("dfmod_media_score_count") == before_scores + 1  # the rejected one has no score
    assert sample("dfmod_media_score_bucket", le="0.9") == before_high  # 0.93 lands above 0.9


def test_build_and_model_info() -> None:
    assert sample("dfmod_build_info", version=__version__, pipeline_version=PIPELINE_VERSION) == 1
    metrics.set_model_info(ModelInfo(name="m", version="1", weights="random-init", threshold=0.4))
    metrics.set_model_info(ModelInfo(name="m", version="2", weights="sha256:ab", threshold=0.5,
                                     preprocessing_version="p"))
    assert sample("dfmod_model_info", model="m", model_version="2", weights="sha256:ab", threshold="0.5",
                  preprocessing_version="p") == 1
    assert sample("dfmod_model_info", model="m", model_version="1", weights="random-init", threshold="0.4",
                  preprocessing_version="") == 0  # replaced, not added


class Lags:
    def __init__(self, *answers: dict[TopicPartition, int] | Exception) -> None:
        self.answers = list(answers)

    def lag(self) -> dict[TopicPartition, int]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_lag_per_partition_drops_revoked_ones_and_survives_broker_errors() -> None:
    report = metrics._LagReporter(every_s=0.0)
    a, b = TopicPartition("lag.events", 0), TopicPartition("lag.events", 1)
    report(Lags({a: 5, b: 7}))
    assert sample("dfmod_consumer_lag", topic="lag.events", partition="1") == 7
    report(Lags(TimeoutError("broker busy")))  # keeps the last values, raises nothing
    assert sample("dfmod_consumer_lag", topic="lag.events", partition="0") == 5
    report(Lags({a: 0}))
    assert sample("dfmod_consumer_lag", topic="lag.events", partition="0") == 0
    assert REGISTRY.get_sample_value("dfmod_consumer_lag", {"topic": "lag.events", "partition": "1"}) is None


def test_lag_is_refreshed_at_most_every_interval() -> None:
    report = metrics._LagReporter(every_s=3600)
    tp = TopicPartition("lag.slow", 0)
    report(Lags({tp: 1}))
    report(Lags({tp: 99}))  # too soon: not asked
    assert sample("dfmod_consumer_lag", topic="lag.slow", partition="0") == 1
