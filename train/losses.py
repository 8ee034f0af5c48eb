"""The training objective: weighted cross-entropy plus optional hypersphere terms, after optional slerp.

The step follows the reference implementations (yermandy/deepfake-detection@0b872f7 src/model/dfdet.py:
273-334, src/loss.py:40-69, src/losses/unifalign.py; GenD@e03532d src/model/GenD.py:194-218): slerp
REPLACES each training feature by an interpolation towards a same-class partner (so CE sees N rows, not
2N), and the uniformity/alignment terms are computed on the features the head saw.

Every feature handed to these functions is expected to be L2-normalised (the detector's `features`).
The hypersphere terms are computed in float32 whatever the autocast dtype, because exp(-2 d^2) of bf16
distances loses most of its precision near the optimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pairwise_sq_dists(z: Tensor) -> Tensor:
    """Squared Euclidean distances of all pairs i < j, as a flat vector.

    Computed from the Gram matrix rather than `torch.pdist` so the gradient stays finite when two
    features coincide (slerp can produce exact duplicates).
    """
    z = z.float()
    sq_norm = (z * z).sum(dim=1)
    d2 = sq_norm[:, None] + sq_norm[None, :] - 2.0 * (z @ z.T)
    i, j = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    return d2[i, j].clamp_min(0.0)


#: The reference clamps mean(exp(.)) at this value before the log (unifalign.py:49,63).
UNIFORMITY_CLIP = 1e-6


def uniformity_loss(z: Tensor, t: float = 2.0) -> Tensor:
    """log max(mean_{i<j} exp(-t ||z_i - z_j||^2), 1e-6) (Wang & Isola, clamped as the reference does).

    Lower means more uniformly spread. Fewer than two features have no pairs: the loss is 0.
    """
    if z.shape[0] < 2:
        return z.new_zeros((), dtype=torch.float32)
    d2 = _pairwise_sq_dists(z)
    # logsumexp - log(n) is the stable form of log(mean(exp(.))); clamping the log = clamping the mean.
    log_mean = torch.logsumexp(-t * d2, dim=0) - torch.log(torch.tensor(float(d2.numel()), device=z.device))
    return log_mean.clamp_min(math.log(UNIFORMITY_CLIP))


def alignment_loss(z: Tensor, labels: Tensor, alpha: float = 2.0) -> Tensor:
    """mean ||z_i - z_j||^alpha over all pairs i < j that share a label (label-aware alignment).

    0 when no two features share a label.
    """
    if z.shape[0] < 2:
        return z.new_zeros((), dtype=torch.float32)
    d2 = _pairwise_sq_dists(z)
    i, j = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    same = labels[i] == labels[j]
    if not bool(same.any()):
        return z.new_zeros((), dtype=torch.float32)
    d2 = d2[same]
    dist_pow = d2 if alpha == 2.0 else d2.clamp_min(1e-12).pow(alpha / 2.0)
    return dist_pow.mean()


def slerp(a: Tensor, b: Tensor, t: Tensor | float) -> Tensor:
    """Spherical interpolation between unit vectors a and b (rows), t in [0, 1] (scalar or one per row).

    Near-parallel pairs fall back to a normalised linear interpolation (sin(omega) -> 0); the result is
    always renormalised so it stays on the sphere despite rounding.
    """
    a32, b32 = a.float(), b.float()
    t_col = torch.as_tensor(t, dtype=torch.float32, device=a.device)
    if t_col.ndim == 1:
        t_col = t_col[:, None]
    cos = (a32 * b32).sum(dim=1, keepdim=True).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
    omega = torch.acos(cos)
    sin_omega = torch.sin(omega)
    near = sin_omega < 1e-4
    safe_sin = torch.where(near, torch.ones_like(sin_omega), sin_omega)
    wa = torch.where(near, 1.0 - t_col, torch.sin((1.0 - t_col) * omega) / safe_sin)
    wb = torch.where(near, t_col, torch.sin(t_col * omega) / safe_sin)
    out = wa * a32 + wb * b32
    return F.normalize(out, dim=1).to(a.dtype)


def slerp_replace(
    z: Tensor,
    labels: Tensor,
    generator: torch.Generator | None = None,
    t_range: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Each feature replaced by a slerp towards a random same-class partner, t ~ U[t0, t1] per row.

    The reference's `slerp_feature_augmentation` (dfdet.py:273-309): per class in ascending label order,
    partners are ``randperm`` of the class's rows and ``t = rand(n, 1) * (t1 - t0) + t0``; a class with
    fewer than two rows is left as it is. Returns a new tensor (same shape, order and labels).
    """
    out = z.clone()
    t0, t1 = t_range
    for cls in torch.unique(labels):
        mask = labels == cls
        n = int(mask.sum())
        if n < 2:
            continue
        a = z[mask]
        perm = torch.randperm(n, generator=generator, device="cpu").to(z.device)
        t = torch.rand((n, 1), generator=generator, device="cpu").to(z.device) * (t1 - t0) + t0
        out[mask] = slerp(a, a[perm], t).to(z.dtype)
    return out


@dataclass
class Objective:
    """ce_weight * CE(head(z), y) + uniformity_weight * U(z) + alignment_weight * A(z, y).

    z are the features after slerp (when on), i.e. what the head saw, as in the reference where the
    loss reads the head's normalised input (dfdet.py:314-323). A zero weight skips its term entirely.
    """

    ce_weight: float = 1.0
    label_smoothing: float = 0.0
    uniformity_weight: float = 0.0
    alignment_weight: float = 0.0
    alignment_alpha: float = 2.0
    uniformity_t: float = 2.0
    slerp: bool = True
    slerp_range: tuple[float, float] = (0.0, 1.0)

    def __call__(
        self,
        head: nn.Module,
        features: Tensor,
        labels: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Return (total loss, {"ce", "uniformity", "alignment", "total"} as floats for logging)."""
        feats = slerp_replace(features, labels, generator, self.slerp_range) if self.slerp else features
        total = feats.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        if self.ce_weight:
            logits = head(feats)
            ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
            total = total + self.ce_weight * ce
            parts["ce"] = float(ce.detach())
        if self.uniformity_weight:
            uni = uniformity_loss(feats, t=self.uniformity_t)
            total = total + self.uniformity_weight * uni
            parts["uniformity"] = float(uni.detach())
        if self.alignment_weight:
            ali = alignment_loss(feats, labels, alpha=self.alignment_alpha)
            total = total + self.alignment_weight * ali
            parts["alignment"] = float(ali.detach())
        parts["total"] = float(total.detach())
        return total, parts
