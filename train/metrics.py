"""Detection metrics in plain numpy (label 1 = fake = positive, higher score = more fake).

ROC/AUROC/AP/threshold search are written out so the tie handling is explicit (the tests check them
against scikit-learn). The two metrics the reference code reports and selects checkpoints by are computed
exactly as it does, with scikit-learn and SciPy (yermandy/deepfake-detection@0b872f7 src/metrics.py):

* ``mean_average_precision`` ("mAP", reference ``val/mAP_video``): the mean over BOTH classes of the
  average precision (real scored by 1 - p, fake by p), not the fake-class ``average_precision``;
* ``eer_interpolated``: the EER where the linearly interpolated ROC crosses FNR = FPR (brentq), not the
  nearest ROC point that ``eer`` returns.

Every threshold here means "fake when score >= threshold".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from worker.scoring.aggregate import label_for, media_score

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
    above the top score, which flags nothing as fake, capped at 1.0: a threshold is a probability, and
    the caller (calibrate) reports when the cap leaves the achieved FPR above the target.
    """
    fpr, _, thr = roc_curve(scores, labels)
    if np.isnan(fpr).any():
        raise ValueError("threshold_for_fpr needs at least one negative (real) sample")
    ok = np.flatnonzero(fpr <= target_fpr + 1e-12)
    i = int(ok[-1])
    if np.isinf(thr[i]):
        return float(min(np.nextafter(thr[1], np.inf), 1.0))
    return float(min(max(thr[i], 0.0), 1.0))


def fpr_tpr_at(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> tuple[float, float]:
    """(FPR, TPR) of the rule score >= threshold."""
    s, y = _prepare(scores, labels)
    pred = s >= threshold
    n_neg, n_pos = int((y == 0).sum()), int((y == 1).sum())
    fpr = float((pred & (y == 0)).sum() / n_neg) if n_neg else math.nan
    tpr = float((pred & (y == 1)).sum() / n_pos) if n_pos else math.nan
    return fpr, tpr


def video_scores(
    frame_scores: npt.ArrayLike, video_ids: Sequence[str], frame_indices: Sequence[int] | None = None
) -> tuple[list[str], FloatArray]:
    """Video score by the worker's rule (`worker.scoring.aggregate.media_score`): max over a frame's faces, mean
    over frames. Without `frame_indices` every crop counts as its own frame. Ids in first-seen order."""
    s = np.asarray(frame_scores, dtype=np.float64).ravel()
    if s.size != len(video_ids):
        raise ValueError("frame_scores and video_ids differ in length")
    frames = list(range(s.size)) if frame_indices is None else list(frame_indices)
    if len(frames) != s.size:
        raise ValueError("frame_scores and frame_indices differ in length")
    members: dict[str, list[int]] = {}
    for i, vid in enumerate(video_ids):
        members.setdefault(vid, []).append(i)
    ids = list(members)
    out = np.array(
        [media_score([frames[i] for i in idx], s[idx].tolist())[0] for idx in members.values()], dtype=np.float64
    )
    return ids, out


def video_level(
    frame_scores: npt.ArrayLike,
    frame_labels: npt.ArrayLike,
    video_ids: Sequence[str],
    frame_indices: Sequence[int] | None = None,
) -> tuple[list[str], FloatArray, npt.NDArray[np.int64]]:
    """(video ids, video scores, video labels); a video whose frames disagree on the label is an error."""
    ids, scores = video_scores(frame_scores, video_ids, frame_indices)
    y = np.asarray(frame_labels).ravel().astype(np.int64)
    label_of: dict[str, int] = {}
    for vid, lab in zip(video_ids, y.tolist(), strict=True):
        if label_of.setdefault(vid, lab) != lab:
            raise ValueError(f"video {vid!r} has frames with both labels")
    return ids, scores, np.array([label_of[v] for v in ids], dtype=np.int64)


def mean_average_precision(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The reference's "mAP": mean over the two classes of scikit-learn's average precision.

    Same as ``average_precision_score(one_hot(labels), [1 - p, p], average="macro")`` in
    deepfake-detection@0b872f7 src/metrics.py:60. NaN when only one class is present.
    """
    from sklearn.metrics import average_precision_score

    s, y = _prepare(scores, labels)
    if s.size == 0 or y.min() == y.max():
        return math.nan
    return float((average_precision_score(y == 1, s) + average_precision_score(y == 0, 1.0 - s)) / 2.0)


def eer_interpolated(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The reference's EER: root of 1 - x - ROC(x) on the linearly interpolated ROC (brentq).

    deepfake-detection@0b872f7 src/metrics.py:74-83 (which returns 1.0 where brentq finds no root; that
    cannot happen for a two-class ROC). NaN when only one class is present.
    """
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq
    from sklearn.metrics import roc_curve as sk_roc_curve

    s, y = _prepare(scores, labels)
    if s.size == 0 or y.min() == y.max():
        return math.nan
    fpr, tpr, _ = sk_roc_curve(y, s, pos_label=1)
    roc = interp1d(fpr, tpr)
    return float(brentq(lambda x: 1.0 - x - float(roc(x)), 0.0, 1.0))


def count_uncertain(scores: npt.ArrayLike, threshold: float, band: float) -> int:
    """Items the worker would label `uncertain` (`worker.scoring.aggregate.label_for`) at this threshold and band."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    return sum(1 for v in s.tolist() if label_for(v, threshold, band) == "uncertain")


def summary(
    scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float = 0.5, uncertain_band: float = 0.0
) -> dict[str, float]:
    """The table row of one evaluation (keys are what metrics.json stores).

    ``ap``: average precision of the fake class; ``map``: the reference's mean over both classes.
    ``eer``: nearest ROC point (``eer_threshold`` is its score); ``eer_interp``: the reference's brentq EER.
    ``n_uncertain``: items within ``uncertain_band`` of ``threshold`` (0 when the band is 0).
    """
    s, y = _prepare(scores, labels)
    e, e_thr = eer(s, y)
    return {
        "auroc": auroc(s, y),
        "ap": average_precision(s, y),
        "map": mean_average_precision(s, y),
        "eer": e,
        "eer_threshold": e_thr,
        "eer_interp": eer_interpolated(s, y),
        "accuracy": accuracy_at(s, y, threshold),
        "threshold": threshold,
        "uncertain_band": uncertain_band,
        "n_uncertain": float(count_uncertain(s, threshold, uncertain_band)),
        "n": float(s.size),
        "n_fake": float((y == 1).sum()),
        "n_real": float((y == 0).sum()),
    }
