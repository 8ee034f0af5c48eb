"""Our numpy metrics against scikit-learn on fixed and random inputs (ties included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from train import metrics


def random_case(seed: int, n: int = 300, tie_decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.normal(loc=labels * 0.8, scale=1.0)
    scores = 1 / (1 + np.exp(-scores))
    if tie_decimals is not None:
        scores = np.round(scores, tie_decimals)
    return scores, labels


CASES = [random_case(s) for s in range(4)] + [random_case(10 + s, tie_decimals=1) for s in range(4)]


def test_known_small_case() -> None:
    scores = [0.1, 0.4, 0.35, 0.8]
    labels = [0, 0, 1, 1]
    assert metrics.auroc(scores, labels) == pytest.approx(0.75)
    assert metrics.average_precision(scores, labels) == pytest.approx((1.0 + 2 / 3) / 2)  # 0.8333...


@pytest.mark.parametrize(("scores", "labels"), CASES)
def test_roc_auc_ap_match_sklearn(scores: np.ndarray, labels: np.ndarray) -> None:
    assert metrics.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.average_precision(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    fpr, tpr, thr = metrics.roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])  # the first is +inf here, max+1/inf in sklearn


@pytest.mark.parametrize(("scores", "labels"), CASES)
def test_eer_matches_brute_force_from_sklearn_roc(scores: np.ndarray, labels: np.ndarray) -> None:
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - sk_tpr
    gaps = [abs(fnr[i] - sk_fpr[i]) for i in range(len(sk_fpr))]
    best = min(range(len(gaps)), key=gaps.__getitem__)
    eer, thr = metrics.eer(scores, labels)
    assert eer == pytest.approx((sk_fpr[best] + fnr[best]) / 2)
    # the threshold reproduces that operating point when applied directly
    pred = scores >= thr
    fpr_direct = (pred & (labels == 0)).sum() / (labels == 0).sum()
    fnr_direct = (~pred & (labels == 1)).sum() / (labels == 1).sum()
    assert eer == pytest.approx((fpr_direct + fnr_direct) / 2)


def test_perfect_and_inverted_separation() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    good = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert metrics.auroc(good, labels) == 1.0
    assert metrics.eer(good, labels)[0] == 0.0
    assert metrics.average_precision(good, labels) == 1.0
    assert metrics.auroc(1 - good, labels) == 0.0


def test_single_class_is_nan() -> None:
    assert math.isnan(metrics.auroc([0.2, 0.3], [1, 1]))
    assert math.isnan(metrics.eer([0.2, 0.3], [0, 0])[0])
    with pytest.raises(ValueError):
        metrics.auroc([0.1], [2])


def test_accuracy_at_threshold() -> None:
    scores = np.array([0.1, 0.5, 0.6, 0.9])
    labels = np.array([0, 0, 1, 1])
    assert metrics.accuracy_at(scores, labels, 0.5) == 0.75  # 0.5 >= 0.5 -> fake, wrong
    assert metrics.accuracy_at(scores, labels, 0.55) == 1.0


@pytest.mark.parametrize(("scores", "labels"), CASES)
@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2, 0.5])
def test_threshold_for_fpr_is_the_best_feasible(scores: np.ndarray, labels: np.ndarray, target: float) -> None:
    thr = metrics.threshold_for_fpr(scores, labels, target)
    assert 0.0 <= thr <= 1.0
    fpr, tpr = metrics.fpr_tpr_at(scores, labels, thr)
    if thr == 1.0 and (scores[labels == 0] == 1.0).any():
        return  # a real item scored exactly 1.0: no probability threshold can exclude it (calibrate warns)
    assert fpr <= target
    # no lower candidate threshold is also feasible: the next distinct score below breaks the target
    lower = scores[scores < thr]
    if lower.size:
        fpr_next, tpr_next = metrics.fpr_tpr_at(scores, labels, lower.max())
        assert fpr_next > target
        assert tpr_next >= tpr


def test_threshold_for_fpr_with_too_few_negatives_flags_nothing() -> None:
    scores = np.array([0.9, 0.2, 0.95])
    labels = np.array([0, 1, 1])
    thr = metrics.threshold_for_fpr(scores, labels, 0.0)
    assert thr == 0.95  # 0.95 alone: FPR 0, the real at 0.9 stays below
    thr = metrics.threshold_for_fpr(np.array([0.9, 0.2]), np.array([0, 1]), 0.0)
    assert thr > 0.9 and metrics.fpr_tpr_at([0.9, 0.2], [0, 1], thr)[0] == 0.0
    # a real scored 1.0: the threshold stays a probability (1.0), never the float above it
    assert metrics.threshold_for_fpr(np.array([1.0, 0.2]), np.array([0, 1]), 0.0) == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_map_is_sklearn_ap_averaged_over_both_classes(seed: int) -> None:
    scores, labels = random_case(100 + seed, n=257, tie_decimals=2 if seed % 2 else None)
    probs = np.stack([1.0 - scores, scores], axis=1)  # the reference's (p_real, p_fake) columns
    expected = average_precision_score(np.eye(2)[labels], probs, average="macro")
    assert metrics.mean_average_precision(scores, labels) == pytest.approx(expected, abs=1e-12)
    # and it is not the fake-class AP the older "ap" key reports
    assert metrics.mean_average_precision(scores, labels) != pytest.approx(metrics.average_precision(scores, labels))


@pytest.mark.parametrize("seed", range(6))
def test_eer_interpolated_is_where_the_linear_roc_meets_fnr_equals_fpr(seed: int) -> None:
    scores, labels = random_case(200 + seed, n=173, tie_decimals=2 if seed % 2 else None)
    fpr, tpr, _ = sk_roc_curve(labels, scores)
    got = metrics.eer_interpolated(scores, labels)
    # independent of brentq: intersect each ROC segment with the line tpr = 1 - fpr in closed form
    g = 1.0 - fpr - tpr  # decreasing from 1 to -1 along the curve
    k = int(np.flatnonzero(g <= 0)[0])
    lam = g[k - 1] / (g[k - 1] - g[k])
    expected = fpr[k - 1] + lam * (fpr[k] - fpr[k - 1])
    assert got == pytest.approx(expected, abs=1e-9)
    # the nearest-point EER differs by up to half a ROC step
    assert abs(metrics.eer(scores, labels)[0] - got) < 0.05
    assert math.isnan(metrics.eer_interpolated([0.1, 0.2], [1, 1]))
    assert math.isnan(metrics.mean_average_precision([0.1, 0.2], [0, 0]))


def test_summary_names_both_metrics_and_counts_the_uncertain_band() -> None:
    scores, labels = np.array([0.1, 0.48, 0.52, 0.9]), np.array([0, 0, 1, 1])
    m = metrics.summary(scores, labels, threshold=0.5, uncertain_band=0.05)
    assert {"auroc", "ap", "map", "eer", "eer_interp", "n_uncertain"} <= set(m)
    assert m["n_uncertain"] == 2  # 0.48 and 0.52 are within 0.05 of 0.5
    assert metrics.summary(scores, labels)["n_uncertain"] == 0


def test_video_scores_use_the_workers_rule() -> None:
    from worker.scoring.aggregate import media_score

    # video a: frame 0 has two faces (max 0.9), frame 1 one face (0.1) -> mean of frame maxima 0.5
    ids, v = metrics.video_scores([0.2, 0.9, 0.1, 0.7], ["a", "a", "a", "b"], frame_indices=[0, 0, 1, 0])
    assert ids == ["a", "b"]
    np.testing.assert_allclose(v, [0.5, 0.7])
    assert v[0] == media_score([0, 0, 1], [0.2, 0.9, 0.1])[0]


def test_video_scores_are_frame_means() -> None:
    ids, v = metrics.video_scores([0.2, 0.4, 1.0, 0.0, 0.5], ["a", "a", "b", "b", "c"])
    assert ids == ["a", "b", "c"]
    np.testing.assert_allclose(v, [0.3, 0.5, 0.5])
    ids, v, y = metrics.video_level([0.2, 0.4, 0.9], [0, 0, 1], ["a", "a", "b"])
    np.testing.assert_array_equal(y, [0, 1])
    with pytest.raises(ValueError):
        metrics.video_level([0.2, 0.4], [0, 1], ["a", "a"])
