"""The training objective of DESIGN.md section 3: cross-entropy plus optional hypersphere terms and slerp.

Every feature handed to these functions is expected to be L2-normalised (the detector's `features`).
The hypersphere terms are computed in float32 whatever the autocast dtype, because exp(-2 d^2) of bf16
distances loses most of its precision near the optimum.
"""

from __future__ import annotations

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


def uniformity_loss(z: Tensor, t: float = 2.0) -> Tensor:
    """log mean_{i<j} exp(-t ||z_i - z_j||^2) (Wang & Isola); lower means more uniformly spread.

    Fewer than two features have no pairs: the loss is 0 (and carries no gradient).
    """
    if z.shape[0] < 2:
        return z.new_zeros((), dtype=torch.float32)
    d2 = _pairwise_sq_dists(z)
    # logsumexp - log(n) is the stable form of log(mean(exp(.))).
    return torch.logsumexp(-t * d2, dim=0) - torch.log(torch.tensor(float(d2.numel()), device=z.device))


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


def slerp_augment(z: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One new feature per input: slerp towards a random partner of the same class, t ~ U[0, 1].

    Partners are a random permutation within each class (a class with one member pairs with itself, which
    returns it unchanged). Returns (augmented features, their labels), same order and labels as the input.
    """
    n = z.shape[0]
    partner = torch.arange(n, device=z.device)
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls, as_tuple=False).flatten()
        perm = torch.randperm(idx.numel(), generator=generator, device="cpu").to(z.device)
        partner[idx] = idx[perm]
    t = torch.rand(n, generator=generator, device="cpu").to(z.device)
    return slerp(z, z[partner], t), labels.clone()


@dataclass
class Objective:
    """CE (+ label smoothing) on head(features), plus weighted uniformity and alignment terms.

    With `slerp`, the head also sees one slerp-augmented feature per sample (same labels), concatenated
    to the originals, so the CE is over 2N logits; the hypersphere terms use the original features only.
    """

    label_smoothing: float = 0.0
    uniformity_weight: float = 0.0
    alignment_weight: float = 0.0
    alignment_alpha: float = 2.0
    uniformity_t: float = 2.0
    slerp: bool = True

    def __call__(
        self,
        head: nn.Module,
        features: Tensor,
        labels: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Return (total loss, {"ce", "uniformity", "alignment", "total"} as floats for logging)."""
        feats, targets = features, labels
        if self.slerp:
            z_aug, y_aug = slerp_augment(features, labels, generator=generator)
            feats = torch.cat([features, z_aug.to(features.dtype)], dim=0)
            targets = torch.cat([labels, y_aug], dim=0)
        logits = head(feats)
        ce = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        total = ce
        parts: dict[str, float] = {"ce": float(ce.detach())}
        if self.uniformity_weight:
            uni = uniformity_loss(features, t=self.uniformity_t)
            total = total + self.uniformity_weight * uni
            parts["uniformity"] = float(uni.detach())
        if self.alignment_weight:
            ali = alignment_loss(features, labels, alpha=self.alignment_alpha)
            total = total + self.alignment_weight * ali
            parts["alignment"] = float(ali.detach())
        parts["total"] = float(total.detach())
        return total, parts
