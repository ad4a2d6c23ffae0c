"""Embedding geometry: views alike within groups, groups diverse within a class, near-duplicates.

All functions take unit image embeddings E (N, D), one row per readable view, and `groups`
(N,) integer group index per row. None of them builds an N x N matrix:
- within-group mean cosine uses |sum of a group's rows|^2 = sum of all its pairwise cosines;
- between-group similarity uses every different-group pair of a class when there are at most
  `pairs_per_label` of them, else that many distinct random ones (seeded);
- near-duplicates multiply blocks of rows (block x block at a time) and keep only pairs above
  the threshold, so memory is O(block^2 + pairs found).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def within_group_means(embeddings: np.ndarray, groups: np.ndarray) -> dict[int, float]:
    """Mean cosine between distinct views of each group with at least two views."""
    count = int(groups.max()) + 1 if len(groups) else 0
    sums = np.zeros((count, embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, groups, embeddings)
    sizes = np.bincount(groups, minlength=count)
    result = {}
    for group in np.nonzero(sizes >= 2)[0]:
        n = sizes[group]
        # |sum|^2 = n (the diagonal, unit rows) + the sum over ordered off-diagonal pairs.
        result[int(group)] = float((sums[group] @ sums[group] - n) / (n * (n - 1)))
    return result


def different_group_pair_count(groups: np.ndarray, rows: np.ndarray) -> int:
    """How many unordered pairs of `rows` lie in different groups."""
    sizes = np.unique(groups[rows], return_counts=True)[1].astype(np.int64)
    return int((len(rows) * (len(rows) - 1) - np.sum(sizes * (sizes - 1))) // 2)


def _all_different_group_pairs(groups: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair of `rows` from different groups (as many as there are pairs)."""
    order = rows[np.argsort(groups[rows], kind="stable")]
    starts = np.flatnonzero(np.diff(groups[order])) + 1
    firsts, seconds = [], []
    for start, end in zip([0, *starts], [*starts, len(order)]):
        later = order[end:]
        firsts.append(np.repeat(order[start:end], len(later)))
        seconds.append(np.tile(later, end - start))
    return np.concatenate(firsts), np.concatenate(seconds)


def sampled_between_group_mean(embeddings: np.ndarray, groups: np.ndarray, rows: np.ndarray,
                               pairs: int, rng: np.random.Generator) -> tuple[float | None, int]:
    """Mean cosine over up to `pairs` distinct pairs of `rows` from different groups, and how
    many pairs that was: all of them when there are no more than `pairs`, else a random set."""
    possible = different_group_pair_count(groups, rows) if len(rows) else 0
    if possible == 0:
        return None, 0
    if possible <= pairs:
        first, second = _all_different_group_pairs(groups, rows)
    else:
        # Draw more than needed, then drop same-group pairs and repeats (keeping draw order,
        # so the set stays random); never loops, and may fall a little short of `pairs`.
        first = rng.choice(rows, size=pairs * 2)
        second = rng.choice(rows, size=pairs * 2)
        keep = groups[first] != groups[second]
        first, second = first[keep], second[keep]
        low, high = np.minimum(first, second), np.maximum(first, second)
        _, index = np.unique(low * (int(rows.max()) + 1) + high, return_index=True)
        index = np.sort(index)[:pairs]
        first, second = first[index], second[index]
    cosines = np.einsum("ij,ij->i", embeddings[first], embeddings[second])
    return float(cosines.mean()), int(len(first))


def view_similarity_table(embeddings: np.ndarray, groups: np.ndarray, labels: list[str],
                          pairs_per_label: int = 2000, seed: int = 0,
                          classes: list[str] | None = None) -> dict[str, dict]:
    """Per label (a class, corner case or view strategy): within-group vs between-group cosine.

    `labels[i]` is the label of row i. Between-group pairs are drawn within a label only and,
    with `classes` (row i's class or corner case), within one class of it: per view strategy,
    diversity then still means "between groups of the same class", not "between classes".
    """
    within = within_group_means(embeddings, groups)
    rows_by_label: dict[str, list[int]] = defaultdict(list)
    for row, label in enumerate(labels):
        rows_by_label[label].append(row)
    rng = np.random.default_rng(seed)
    table = {}
    for label in sorted(rows_by_label):
        rows = np.array(rows_by_label[label])
        label_groups = sorted(set(groups[rows].tolist()))
        alike = [within[g] for g in label_groups if g in within]
        if classes is None:
            between, sampled = sampled_between_group_mean(embeddings, groups, rows,
                                                          pairs_per_label, rng)
        else:
            between, sampled = _between_within_classes(embeddings, groups, rows, classes,
                                                       pairs_per_label, rng)
        table[label] = {"groups": len(label_groups), "views": int(len(rows)),
                        "within_group": float(np.mean(alike)) if alike else None,
                        "between_groups": between, "pairs_sampled": sampled,
                        "pairs_possible": _possible_pairs(groups, rows, classes)}
    return table


def _possible_pairs(groups: np.ndarray, rows: np.ndarray, classes: list[str] | None) -> int:
    """Different-group pairs of `rows` that the between-group mean may draw from."""
    if classes is None:
        return different_group_pair_count(groups, rows)
    return sum(different_group_pair_count(groups, members)
               for members in _rows_by_class(rows, classes).values())


def _rows_by_class(rows: np.ndarray, classes: list[str]) -> dict[str, np.ndarray]:
    by_class: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        by_class[classes[row]].append(int(row))
    return {name: np.array(members) for name, members in sorted(by_class.items())}


def _between_within_classes(embeddings: np.ndarray, groups: np.ndarray, rows: np.ndarray,
                            classes: list[str], pairs: int,
                            rng: np.random.Generator) -> tuple[float | None, int]:
    """Mean cosine of different-group pairs that share a class: every such pair when there are
    at most `pairs`, else the `pairs` shared out over the classes by their possible pairs."""
    by_class = _rows_by_class(rows, classes)
    possible = {name: different_group_pair_count(groups, members) for name, members in by_class.items()}
    everything = sum(possible.values())
    total, sampled = 0.0, 0
    for name, members in by_class.items():
        share = (possible[name] if everything <= pairs
                 else max(1, round(pairs * possible[name] / everything)))
        mean, count = sampled_between_group_mean(embeddings, groups, members, share, rng)
        if count:
            total, sampled = total + mean * count, sampled + count
    return (total / sampled if sampled else None), sampled


def near_duplicates(embeddings: np.ndarray, groups: np.ndarray, threshold: float,
                    block: int = 4096, keep: int = 1000, device: str | torch.device = "cpu") -> dict:
    """Pairs of views of different groups with cosine above `threshold`.

    Returns the number of such view pairs, the distinct group pairs and groups involved, and
    the `keep` most similar pairs as (row, row, cosine).
    """
    # Imported here: the measurements import this module, and `synthgen audit` reads their
    # --fail-on names before it imports torch (seconds).
    import torch

    count = len(embeddings)
    matrix = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(device)
    group_tensor = torch.from_numpy(groups.astype(np.int64)).to(device)
    view_pairs = 0
    group_pairs: set[tuple[int, int]] = set()
    best: list[tuple[float, int, int]] = []
    for start in range(0, count, block):
        rows = matrix[start:start + block]
        for other in range(start, count, block):
            cosines = rows @ matrix[other:other + block].T
            hit = cosines > threshold
            hit &= group_tensor[start:start + block, None] != group_tensor[None, other:other + block]
            if other == start:
                # Each unordered pair once, no self-pairs (an index comparison rather than
                # torch.triu, which not every device implements for bool tensors).
                index = torch.arange(len(rows), device=hit.device)
                hit &= index[:, None] < index[None, :hit.shape[1]]
            found = hit.nonzero()
            if len(found) == 0:
                continue
            values = cosines[found[:, 0], found[:, 1]].float().cpu().numpy()
            found = found.cpu().numpy()
            view_pairs += len(found)
            for (i, j), value in zip(found, values):
                a, b = start + int(i), other + int(j)
                group_pairs.add(tuple(sorted((int(groups[a]), int(groups[b])))))
                best.append((float(value), a, b))
            if len(best) > 4 * keep:
                best = sorted(best, reverse=True)[:keep]
    best = sorted(best, reverse=True)[:keep]
    involved = {g for pair in group_pairs for g in pair}
    return {"view_pairs": view_pairs, "group_pairs": len(group_pairs),
            "groups_involved": sorted(involved), "top": [(a, b, v) for v, a, b in best]}
