"""The objective's parts against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from train.losses import Objective, alignment_loss, slerp, slerp_replace, uniformity_loss

# Three unit vectors: squared distances (0,1)=2, (0,2)=4, (1,2)=2.
Z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def identity_head() -> nn.Linear:
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    return head


def test_uniformity_by_hand() -> None:
    expected = math.log((2 * math.exp(-2 * 2) + math.exp(-2 * 4)) / 3)
    assert uniformity_loss(Z).item() == pytest.approx(expected, rel=1e-6)
    # temperature enters the exponent
    expected_t1 = math.log((2 * math.exp(-2) + math.exp(-4)) / 3)
    assert uniformity_loss(Z, t=1.0).item() == pytest.approx(expected_t1, rel=1e-6)


def test_uniformity_single_feature_is_zero() -> None:
    assert uniformity_loss(Z[:1]).item() == 0.0


def test_alignment_by_hand() -> None:
    assert alignment_loss(Z, torch.tensor([0, 0, 1])).item() == pytest.approx(2.0)  # pair (0,1)
    assert alignment_loss(Z, torch.tensor([0, 1, 0])).item() == pytest.approx(4.0)  # pair (0,2)
    assert alignment_loss(Z, torch.tensor([0, 0, 0])).item() == pytest.approx((2 + 4 + 2) / 3)
    # alpha = 1: plain distances sqrt(2), 2, sqrt(2)
    got = alignment_loss(Z, torch.tensor([0, 0, 0]), alpha=1.0).item()
    assert got == pytest.approx((2 * math.sqrt(2) + 2) / 3, rel=1e-5)
    assert alignment_loss(Z, torch.tensor([0, 1, 2])).item() == 0.0  # no same-label pair


def test_hypersphere_terms_have_finite_gradients_on_duplicates() -> None:
    z = torch.tensor([[0.6, 0.8], [0.6, 0.8], [1.0, 0.0]], requires_grad=True)
    loss = uniformity_loss(z) + alignment_loss(z, torch.tensor([0, 0, 1]), alpha=1.0)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_cross_entropy_with_label_smoothing_by_hand() -> None:
    feats = torch.tensor([[1.0, 0.0]])  # identity head -> logits (1, 0)
    obj = Objective(label_smoothing=0.1, uniformity_weight=0.0, alignment_weight=0.0, slerp=False)
    total, parts = obj(identity_head(), feats, torch.tensor([0]))
    lse = math.log(math.exp(1.0) + 1.0)
    log_p = [1.0 - lse, -lse]
    expected = -(0.95 * log_p[0] + 0.05 * log_p[1])  # smoothing 0.1 over 2 classes: 0.95 / 0.05
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert parts["ce"] == pytest.approx(expected, rel=1e-6)
    assert set(parts) == {"ce", "total"}


def test_objective_combines_weighted_parts() -> None:
    labels = torch.tensor([0, 0, 1])
    obj = Objective(uniformity_weight=0.5, alignment_weight=0.1, slerp=False)
    total, parts = obj(identity_head(), Z, labels)
    ce = F.cross_entropy(Z, labels).item()
    uni = math.log((2 * math.exp(-4) + math.exp(-8)) / 3)
    assert parts["ce"] == pytest.approx(ce, rel=1e-6)
    assert parts["uniformity"] == pytest.approx(uni, rel=1e-6)
    assert parts["alignment"] == pytest.approx(2.0)
    assert total.item() == pytest.approx(ce + 0.5 * uni + 0.1 * 2.0, rel=1e-6)
    assert parts["total"] == pytest.approx(total.item())


def test_objective_with_slerp_replaces_the_features_it_scores() -> None:
    head = identity_head()
    feats = F.normalize(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.tensor([0, 1] * 4)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    obj = Objective(slerp=True, uniformity_weight=0.5, alignment_weight=0.1)
    total, parts = obj(head, feats, labels, gen_a)
    z_aug = slerp_replace(feats, labels, gen_b)
    assert z_aug.shape == feats.shape  # N rows, not 2N
    ce = F.cross_entropy(head(z_aug), labels)
    expected = ce + 0.5 * uniformity_loss(z_aug) + 0.1 * alignment_loss(z_aug, labels)
    assert parts["ce"] == pytest.approx(ce.item(), rel=1e-6)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_uniformity_is_clamped_like_the_reference() -> None:
    far = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # exp(-2 * 4) > 1e-6: no clamp
    assert uniformity_loss(far).item() == pytest.approx(-8.0, rel=1e-6)
    assert uniformity_loss(far, t=10.0).item() == pytest.approx(math.log(1e-6), rel=1e-6)  # exp(-40) clamped


def test_slerp_endpoints_midpoint_and_sphere() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0]])
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    assert torch.allclose(slerp(a, b, 0.5), torch.tensor([[1.0, 1.0, 0.0]]) / math.sqrt(2), atol=1e-6)
    # a third of the way: angle pi/6 from a
    assert torch.allclose(
        slerp(a, b, 1 / 3), torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6), 0.0]]), atol=1e-6
    )
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(64, 16, generator=g), dim=1)
    y = F.normalize(torch.randn(64, 16, generator=g), dim=1)
    t = torch.rand(64, generator=g)
    out = slerp(x, y, t)
    assert torch.allclose(out.norm(dim=1), torch.ones(64), atol=1e-5)
    assert torch.allclose(slerp(x, y, torch.zeros(64)), x, atol=1e-5)
    assert torch.allclose(slerp(x, y, torch.ones(64)), y, atol=1e-5)
    # identical endpoints take the near-parallel branch and return the point itself
    assert torch.allclose(slerp(x, x, t), x, atol=1e-6)


def test_slerp_replace_stays_within_class_and_on_sphere() -> None:
    g = torch.Generator().manual_seed(0)
    # class 0 lives in span(e0, e1), class 1 in span(e2, e3): a cross-class slerp would leak components
    c0 = F.normalize(torch.randn(6, 2, generator=g), dim=1)
    c1 = F.normalize(torch.randn(5, 2, generator=g), dim=1)
    z = torch.zeros(11, 4)
    z[:6, :2], z[6:, 2:] = c0, c1
    labels = torch.tensor([0] * 6 + [1] * 5)
    perm = torch.randperm(11, generator=g)
    z, labels = z[perm], labels[perm]
    z_aug = slerp_replace(z, labels, torch.Generator().manual_seed(7))
    assert z_aug.shape == z.shape
    assert torch.allclose(z_aug.norm(dim=1), torch.ones(11), atol=1e-5)
    assert torch.all(z_aug[labels == 0][:, 2:].abs() < 1e-6)
    assert torch.all(z_aug[labels == 1][:, :2].abs() < 1e-6)
    assert not torch.allclose(z_aug, z)  # it actually moved something
    again = slerp_replace(z, labels, torch.Generator().manual_seed(7))
    assert torch.equal(again, z_aug)  # deterministic given the generator


def test_slerp_replace_leaves_a_lone_class_member_alone() -> None:
    z = F.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(2)), dim=1)
    labels = torch.tensor([0, 0, 0, 0, 1])
    out = slerp_replace(z, labels, torch.Generator().manual_seed(0))
    assert torch.equal(out[4], z[4])
