"""How far a measured distribution of values is from its target.

Contract of `distribution_metrics(counts, target)`: `counts` maps every value to a count of
sure classifications (unsure ones never enter), `target` maps every value to a proportion
(summing to 1). Returns plain JSON-able numbers: proportions with 95% Wilson intervals,
KL(measured || target) in nats, entropy normalised by log(#values), the max/min count
ratio (None when a value was never seen), and a chi-square goodness-of-fit test of the counts
against target * total. Values with zero target and zero count are left out of the test;
a nonzero count where the target is zero makes KL and the statistic infinite (reported as
None with `impossible_values`) and the p-value 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

Z_95 = 1.959963984540054


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion; (0, 1) when total is 0."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def distribution_metrics(counts: dict[str, int], target: dict[str, float]) -> dict:
    values = list(counts)
    observed = np.array([counts[v] for v in values], dtype=float)
    expected_share = np.array([target.get(v, 0.0) for v in values], dtype=float)
    total = int(observed.sum())
    result: dict = {"total": total, "counts": {v: int(counts[v]) for v in values},
                    "target": {v: float(target.get(v, 0.0)) for v in values}}
    if total == 0:
        result.update(proportions={}, kl=None, normalised_entropy=None, max_min_ratio=None,
                      chi2=None, chi2_p=None, impossible_values=[])
        return result
    measured = observed / total
    result["proportions"] = {
        v: {"p": float(measured[i]), "ci95": list(wilson_interval(int(observed[i]), total))}
        for i, v in enumerate(values)}
    impossible = [v for i, v in enumerate(values) if expected_share[i] == 0 and observed[i] > 0]
    result["impossible_values"] = impossible
    # scipy's entropy(p, q) is sum p log(p/q): KL(measured || target), inf where q = 0 < p.
    kl = float(stats.entropy(measured, expected_share)) if expected_share.sum() > 0 else math.inf
    # max(0, .): KL is never negative; rounding can give -1e-17 on an exact match.
    result["kl"] = max(0.0, kl) if math.isfinite(kl) else None
    result["normalised_entropy"] = (float(stats.entropy(measured) / math.log(len(values)))
                                    if len(values) > 1 else None)
    result["max_min_ratio"] = float(observed.max() / observed.min()) if observed.min() > 0 else None
    testable = expected_share > 0
    if impossible:
        result["chi2"], result["chi2_p"] = None, 0.0
    elif testable.sum() >= 2:
        chi2, p_value = stats.chisquare(observed[testable], expected_share[testable] / expected_share[testable].sum() * total)
        result["chi2"], result["chi2_p"] = float(chi2), float(p_value)
    else:
        result["chi2"], result["chi2_p"] = None, None
    return result


def agreement_metrics(pairs: list[tuple[str, str | None]]) -> dict | None:
    """Assigned vs. measured value per view: agreement among sure views, confusion counts.

    `pairs` holds (assigned, measured) with measured None for unsure. None if no view had an
    assigned value.
    """
    if not pairs:
        return None
    sure = [(a, m) for a, m in pairs if m is not None]
    agree = sum(1 for a, m in sure if a == m)
    confusion: dict[str, dict[str, int]] = {}
    for assigned, measured in pairs:
        row = confusion.setdefault(assigned, {})
        label = measured if measured is not None else "unsure"
        row[label] = row.get(label, 0) + 1
    return {"views": len(pairs), "sure": len(sure), "agree": agree,
            "agreement": agree / len(sure) if sure else None,
            "ci95": list(wilson_interval(agree, len(sure))),
            "unsure": len(pairs) - len(sure), "confusion": confusion}
