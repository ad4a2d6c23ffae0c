"""Each loss against an independent loop-based reference and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from synthgen.train.losses import group_embedding_loss, multi_positive, nt_xent, supcon


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


def reference_nt_xent(z1, z2, tau):
    z = torch.cat([z1, z2])
    n, batch = len(z), len(z1)
    total = 0.0
    for i in range(n):
        positive = (i + batch) % n
        denominator = sum(math.exp(cosine(z[i], z[a]) / tau) for a in range(n) if a != i)
        total += -math.log(math.exp(cosine(z[i], z[positive]) / tau) / denominator)
    return total / n


def reference_supcon(z, labels, tau):
    """Khosla et al. eq. 2 (L_out), written out term by term."""
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(cosine(z[i], z[a]) / tau) for a in range(len(z)) if a != i)
        losses.append(-sum(math.log(math.exp(cosine(z[i], z[p]) / tau) / denominator)
                           for p in positives) / len(positives))
    return sum(losses) / len(losses)


def reference_multi_positive(z, labels, tau):
    """StableRep: H(p, q), p uniform over positives, q the softmax over all other samples."""
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [a for a in others if labels[a] == labels[i]]
        if not positives:
            continue
        exps = {a: math.exp(cosine(z[i], z[a]) / tau) for a in others}
        q = {a: exps[a] / sum(exps.values()) for a in others}
        p = {a: (1 / len(positives) if a in positives else 0.0) for a in others}
        losses.append(-sum(p[a] * math.log(q[a]) for a in others if p[a] > 0))
    return sum(losses) / len(losses)


E1, E2 = [1.0, 0.0], [0.0, 1.0]


def test_hand_computed_values():
    # Two pairs of orthogonal unit vectors, tau 1: every anchor sees e / (e + 1 + 1).
    z1, z2 = torch.tensor([E1, E2]), torch.tensor([E1, E2])
    assert nt_xent(z1, z2, 1.0).item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)
    # Labels [0, 0, 1]: anchors 0 and 1 -log(e / (e + 1)); anchor 2 has no positive.
    z = torch.tensor([E1, E1, E2])
    assert supcon(z, torch.tensor([0, 0, 1]), 1.0).item() == pytest.approx(
        math.log(1 + 1 / math.e), rel=1e-6)
    # Labels [0, 0, 0, 1] on e1, e1, e2, e2: (2 (log(e+2) - 1/2) + log(e+2)) / 3.
    z = torch.tensor([E1, E1, E2, E2])
    assert multi_positive(z, torch.tensor([0, 0, 0, 1]), 1.0).item() == pytest.approx(
        math.log(math.e + 2) - 1 / 3, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_losses_match_loop_references(seed):
    generator = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    assert nt_xent(z1, z2, 0.3).item() == pytest.approx(reference_nt_xent(z1, z2, 0.3), rel=1e-5)
    z = torch.randn(12, 8, generator=generator)
    labels = torch.randint(0, 4, (12,), generator=generator)
    labels[-1] = 99  # an anchor without positives
    assert supcon(z, labels, 0.5).item() == pytest.approx(
        reference_supcon(z, labels.tolist(), 0.5), rel=1e-5)
    assert multi_positive(z, labels, 0.5).item() == pytest.approx(
        reference_multi_positive(z, labels.tolist(), 0.5), rel=1e-5)


def test_two_views_per_label_reduce_to_nt_xent():
    generator = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    pairs = torch.arange(6).repeat(2)  # z = [z1; z2]: sample i and i + 6 share a label
    expected = nt_xent(z1, z2, 0.2)
    assert supcon(torch.cat([z1, z2]), pairs, 0.2).item() == pytest.approx(expected.item(), rel=1e-6)
    assert multi_positive(torch.cat([z1, z2]), pairs, 0.2).item() == pytest.approx(
        expected.item(), rel=1e-6)


def test_group_objectives():
    generator = torch.Generator().manual_seed(4)
    z = torch.randn(5, 2, 6, generator=generator)  # 5 groups x 2 crops
    simclr = group_embedding_loss("simclr", z, torch.tensor([0, 1, 2, 3, -1]), 0.1)
    assert simclr.item() == pytest.approx(nt_xent(z[:, 0], z[:, 1], 0.1).item(), rel=1e-6)
    # One group per class (and no class for the last): SupCon is SimCLR.
    supcon_unique = group_embedding_loss("supcon", z, torch.tensor([0, 1, 2, 3, -1]), 0.1)
    assert supcon_unique.item() == pytest.approx(simclr.item(), rel=1e-6)
    # Multi-positive with 2 views per group is NT-Xent too.
    assert group_embedding_loss("multipos", z, torch.tensor([0, 0, 0, 0, 0]), 0.1).item() == \
        pytest.approx(simclr.item(), rel=1e-6)
    # Shared classes add positives: SupCon now differs and matches its reference.
    shared = torch.tensor([0, 0, 1, 1, 2])
    flat_labels = shared.repeat_interleave(2)
    assert group_embedding_loss("supcon", z, shared, 0.1).item() == pytest.approx(
        reference_supcon(z.reshape(10, 6), flat_labels.tolist(), 0.1), rel=1e-5)
    # Four views per group, multi-positive: three positives per anchor.
    z4 = torch.randn(3, 4, 6, generator=generator)
    assert group_embedding_loss("multipos", z4, torch.zeros(3, dtype=torch.long), 0.1).item() == \
        pytest.approx(reference_multi_positive(z4.reshape(12, 6), [0] * 4 + [1] * 4 + [2] * 4, 0.1),
                      rel=1e-5)


def test_gradients_pull_positives_together():
    z = torch.tensor([E1, [0.8, 0.6], E2, [0.6, 0.8]], requires_grad=True)
    multi_positive(z, torch.tensor([0, 0, 1, 1]), 0.5).backward()
    # The loss falls when z0 moves towards its positive z1: the gradient points away from it.
    assert float(z.grad[0] @ (z.detach()[1] - z.detach()[0])) < 0
