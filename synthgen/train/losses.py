"""Contrastive losses on embeddings. Inputs need not be normalised: each loss L2-normalises.

Notation: N embeddings z (N, D), temperature tau, s_ij = <z_i, z_j> / tau (cosine / tau).
Every loss is a mean over anchors, in nats.

- `nt_xent(z1, z2)` (SimCLR, Chen et al. 2020): z1[i] and z2[i] are the two views of image i;
  each of the 2B anchors has one positive and 2B - 2 negatives.
- `supcon(z, labels)` (Khosla et al. 2020, L_out): positives of anchor i are all j != i with
  labels[j] == labels[i]; loss_i = -1/|P(i)| sum_{p in P(i)} log softmax_{a != i}(s_ia)[p].
  Anchors without positives are left out of the mean.
- `multi_positive(z, labels)` (StableRep, Tian et al. 2023): cross-entropy between the
  uniform distribution over anchor i's positives and softmax_{a != i}(s_ia).

The per-anchor formula of SupCon L_out and the multi-positive loss is the same; they differ in
what `labels` means (class vs group) and in the reference code that defines them, and the tests
check each against its own reference. Both equal NT-Xent when every label occurs exactly twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Large negative instead of -inf for masked logits: -inf * 0 in the positive-weighted sum
# would give NaN; exp(-1e9) underflows to exactly 0 in float32 all the same.
MASKED = -1e9


def _similarities(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, N) cosine similarities / temperature with the diagonal (self) masked out, float32."""
    z = F.normalize(z.float(), dim=1)
    logits = z @ z.T / temperature
    return logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), MASKED)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent over B pairs: z1, z2 (B, D) -> scalar (mean over the 2B anchors)."""
    batch = len(z1)
    logits = _similarities(torch.cat([z1, z2]), temperature)
    # The positive of anchor i is i + B (and of i + B is i).
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z1.device)
    return F.cross_entropy(logits, targets)


def _positive_mask(labels: torch.Tensor) -> torch.Tensor:
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)


def supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1,
           base_temperature: float | None = None) -> torch.Tensor:
    """SupCon L_out: z (N, D), labels (N,) -> scalar. Khosla et al. scale the loss by
    temperature / base_temperature (1 by default here, i.e. base_temperature = temperature)."""
    positives = _positive_mask(labels).float()
    log_prob = F.log_softmax(_similarities(z, temperature), dim=1)
    count = positives.sum(1)
    has_positive = count > 0
    mean_log_prob_positive = (positives * log_prob).sum(1)[has_positive] / count[has_positive]
    scale = temperature / (base_temperature or temperature)
    return -scale * mean_log_prob_positive.mean()


def multi_positive(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """StableRep's multi-positive loss: z (N, D), labels (N,) (group ids) -> scalar.
    Anchors without a positive have no target distribution and are left out."""
    positives = _positive_mask(labels).float()
    count = positives.sum(1, keepdim=True)
    has_positive = count[:, 0] > 0
    target = positives[has_positive] / count[has_positive]
    log_q = F.log_softmax(_similarities(z, temperature), dim=1)[has_positive]
    return -(target * log_q).sum(1).mean()


def group_embedding_loss(method: str, z: torch.Tensor, class_index: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """The training objective of `method` on a batch's embeddings z (B, n, D) (n views or
    crops per group, view-major) with class labels (B,).

    simclr: n == 2, NT-Xent between the two; multipos: all n of a group are positives;
    supcon: all crops of the same class are positives (class -1, no class, counts as its own
    group: only its own crops are its positives)."""
    groups, per_group = z.shape[:2]
    flat = z.reshape(groups * per_group, -1)
    group_labels = torch.arange(groups, device=z.device).repeat_interleave(per_group)
    if method == "simclr":
        return nt_xent(z[:, 0], z[:, 1], temperature)
    if method == "multipos":
        return multi_positive(flat, group_labels, temperature)
    if method == "supcon":
        classes = class_index.to(z.device).repeat_interleave(per_group)
        # No class: make the label unique to the group (classes are >= 0).
        classes = torch.where(classes < 0, -1 - group_labels, classes)
        return supcon(flat, classes, temperature)
    raise ValueError(f"unknown method {method!r}")
