"""Detection metrics in plain numpy (label 1 = fake = positive, higher score = more fake).

Written out rather than imported from scikit-learn so that the training package's evaluation does not
depend on it at run time and the tie handling is explicit; the tests check equality with scikit-learn.
Every threshold here means "fake when score >= threshold".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def _prepare(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(np.int64)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    return s, y


def _counts(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Cumulative (false positives, true positives, threshold) at each distinct score, descending."""
    s, y = _prepare(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_tie].astype(np.float64)
    fps = (last_of_tie + 1) - tps
    return fps, tps, s[last_of_tie]


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(fpr, tpr, thresholds), starting at (0, 0) with threshold +inf; every distinct score is a point.

    Same points as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
    """
    fps, tps, thr = _counts(scores, labels)
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thr]
    n_neg, n_pos = fps[-1], tps[-1]
    fpr = fps / n_neg if n_neg > 0 else np.full_like(fps, np.nan)
    tpr = tps / n_pos if n_pos > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thresholds


def auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve (trapezoids, ties count one half); NaN when only one class is present."""
    fpr, tpr, _ = roc_curve(scores, labels)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    return float(np.trapezoid(tpr, fpr))


def average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """sum_k (R_k - R_{k-1}) P_k over distinct thresholds (scikit-learn's definition, no interpolation)."""
    fps, tps, _ = _counts(scores, labels)
    n_pos = tps[-1] if tps.size else 0.0
    if n_pos == 0:
        return math.nan
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def eer(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """(equal error rate, its threshold): the ROC point where FPR and FNR are closest, EER = their mean.

    NaN when only one class is present.
    """
    fpr, tpr, thr = roc_curve(scores, labels)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan, math.nan
    fnr = 1.0 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2.0), float(thr[i])


def accuracy_at(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> float:
    """Fraction of items whose decision (score >= threshold -> fake) matches the label."""
    s, y = _prepare(scores, labels)
    if s.size == 0:
        return math.nan
    return float(np.mean((s >= threshold).astype(np.int64) == y))


def threshold_for_fpr(scores: npt.ArrayLike, labels: npt.ArrayLike, target_fpr: float) -> float:
    """The lowest threshold whose FPR is <= target_fpr (so the highest TPR under that constraint).

    When even the strictest distinct score exceeds the target (too few negatives), returns the next float
    above the top score, which flags nothing as fake.
    """
    fpr, _, thr = roc_curve(scores, labels)
    if np.isnan(fpr).any():
        raise ValueError("threshold_for_fpr needs at least one negative (real) sample")
    ok = np.flatnonzero(fpr <= target_fpr + 1e-12)
    i = int(ok[-1])
    if np.isinf(thr[i]):
        return float(np.nextafter(thr[1], np.inf))
    return float(thr[i])


def fpr_tpr_at(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> tuple[float, float]:
    """(FPR, TPR) of the rule score >= threshold."""
    s, y = _prepare(scores, labels)
    pred = s >= threshold
    n_neg, n_pos = int((y == 0).sum()), int((y == 1).sum())
    fpr = float((pred & (y == 0)).sum() / n_neg) if n_neg else math.nan
    tpr = float((pred & (y == 1)).sum() / n_pos) if n_pos else math.nan
    return fpr, tpr


def video_scores(frame_scores: npt.ArrayLike, video_ids: Sequence[str]) -> tuple[list[str], FloatArray]:
    """Video score = mean of its frames' fake probabilities (the paper's rule). Ids in first-seen order."""
    s = np.asarray(frame_scores, dtype=np.float64).ravel()
    if s.size != len(video_ids):
        raise ValueError("frame_scores and video_ids differ in length")
    ids = list(dict.fromkeys(video_ids))
    pos = {v: k for k, v in enumerate(ids)}
    groups = np.fromiter((pos[v] for v in video_ids), dtype=np.int64, count=s.size)
    sums = np.bincount(groups, weights=s, minlength=len(ids))
    counts = np.bincount(groups, minlength=len(ids))
    return ids, sums / counts


def video_level(
    frame_scores: npt.ArrayLike, frame_labels: npt.ArrayLike, video_ids: Sequence[str]
) -> tuple[list[str], FloatArray, npt.NDArray[np.int64]]:
    """(video ids, video scores, video labels); a video whose frames disagree on the label is an error."""
    ids, scores = video_scores(frame_scores, video_ids)
    y = np.asarray(frame_labels).ravel().astype(np.int64)
    label_of: dict[str, int] = {}
    for vid, lab in zip(video_ids, y.tolist(), strict=True):
        if label_of.setdefault(vid, lab) != lab:
            raise ValueError(f"video {vid!r} has frames with both labels")
    return ids, scores, np.array([label_of[v] for v in ids], dtype=np.int64)


def summary(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """The table row of one evaluation: AUROC, AP, EER (+ threshold), accuracy at `threshold`, counts."""
    s, y = _prepare(scores, labels)
    e, e_thr = eer(s, y)
    return {
        "auroc": auroc(s, y),
        "ap": average_precision(s, y),
        "eer": e,
        "eer_threshold": e_thr,
        "accuracy": accuracy_at(s, y, threshold),
        "threshold": threshold,
        "n": float(s.size),
        "n_fake": float((y == 1).sum()),
        "n_real": float((y == 0).sum()),
    }
