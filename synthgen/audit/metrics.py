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

Z_95 = 1.959963984540054


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion; (0, 1) when total is 0."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # At 0 and at n the exact bound is 0 (or 1); floating point leaves 5.6e-17 (0.9999...) for
    # many n, an interval that would not contain its own estimate.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return low, high


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
    # Written out rather than scipy.stats.entropy / chisquare (the tests compare with those):
    # their argument checking cost more than the sums, an audit computes these per scope and
    # attribute, and the statistics tests compute them for thousands of simulated datasets.
    seen = measured > 0
    if impossible or expected_share.sum() == 0:
        result["kl"] = None
    else:
        target_share = expected_share / expected_share.sum()
        kl = float(np.sum(measured[seen] * np.log(measured[seen] / target_share[seen])))
        # max(0, .): KL is never negative; rounding can give -1e-17 on an exact match.
        result["kl"] = max(0.0, kl)
    result["normalised_entropy"] = (float(-np.sum(measured[seen] * np.log(measured[seen]))
                                          / math.log(len(values))) if len(values) > 1 else None)
    result["max_min_ratio"] = float(observed.max() / observed.min()) if observed.min() > 0 else None
    testable = expected_share > 0
    if impossible:
        result["chi2"], result["chi2_p"] = None, 0.0
    elif testable.sum() >= 2:
        expected = expected_share[testable] / expected_share[testable].sum() * total
        chi2 = float(np.sum((observed[testable] - expected) ** 2 / expected))
        result["chi2"] = chi2
        result["chi2_p"] = float(_chi2_survival(int(testable.sum()) - 1, chi2))
    else:
        result["chi2"], result["chi2_p"] = None, None
    return result


def agreement_metrics(pairs: list[tuple[str, str | None]], values: tuple[str, ...] | list[str]) -> dict | None:
    """Recorded vs. measured value per unit (a group or a view): agreement, confusion counts.

    `pairs` holds (recorded, measured) with measured None for unsure; `values` are the values
    the classifier can name. Agreement is over sure units whose recorded value is one of
    `values` (a recorded value the audit does not read can never agree, so it would only
    measure the audit's value list); the confusion table holds every pair, recorded -> measured
    (or "unsure"). Units are independent draws, so the Wilson interval applies. None if no
    unit recorded a value.
    """
    if not pairs:
        return None
    readable = [(a, m) for a, m in pairs if a in values]
    sure = [(a, m) for a, m in readable if m is not None]
    agree = sum(1 for a, m in sure if a == m)
    confusion: dict[str, dict[str, int]] = {}
    for recorded, measured in pairs:
        row = confusion.setdefault(recorded, {})
        label = measured if measured is not None else "unsure"
        row[label] = row.get(label, 0) + 1
    return {"units": len(pairs), "sure": len(sure), "agree": agree,
            "agreement": agree / len(sure) if sure else None,
            "ci95": list(wilson_interval(agree, len(sure))),
            "unsure": len(readable) - len(sure), "not_read": len(pairs) - len(readable),
            "confusion": confusion}


def _chi2_survival(degrees: int, statistic: float) -> float:
    # Imported here: scipy takes about a second to import, and the measurements import this
    # module before `synthgen audit` has checked its options.
    from scipy import special

    return special.chdtrc(degrees, statistic)
