"""Distribution metrics against scipy on known distributions; --fail-on parsing and checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from synthgen.audit.metrics import agreement_metrics, distribution_metrics, wilson_interval
from synthgen.audit.spec import parse_attribute_option, spec_from_recipe
from synthgen.audit.thresholds import evaluate, parse_fail_on
from synthgen.errors import UserError


def test_metrics_agree_with_scipy_on_a_known_distribution():
    counts = {"red": 50, "green": 30, "blue": 20}
    target = {"red": 0.5, "green": 0.25, "blue": 0.25}
    result = distribution_metrics(counts, target)
    measured = np.array([0.5, 0.3, 0.2])
    expected = np.array([0.5, 0.25, 0.25])
    assert result["kl"] == pytest.approx(stats.entropy(measured, expected))
    chi2, p_value = stats.chisquare([50, 30, 20], expected * 100)
    assert result["chi2"] == pytest.approx(chi2)
    assert result["chi2_p"] == pytest.approx(p_value)
    assert result["normalised_entropy"] == pytest.approx(stats.entropy(measured) / math.log(3))
    assert result["max_min_ratio"] == pytest.approx(2.5)
    assert result["proportions"]["green"]["p"] == pytest.approx(0.3)


def test_exact_match_has_zero_kl_and_p_one():
    result = distribution_metrics({"a": 25, "b": 75}, {"a": 0.25, "b": 0.75})
    assert result["kl"] == pytest.approx(0.0)
    assert result["chi2_p"] == pytest.approx(1.0)


def test_a_value_the_target_forbids_is_impossible():
    result = distribution_metrics({"a": 5, "b": 5, "c": 1}, {"a": 0.5, "b": 0.5, "c": 0.0})
    assert result["impossible_values"] == ["c"] and result["kl"] is None and result["chi2_p"] == 0.0


def test_no_observations_give_no_numbers():
    result = distribution_metrics({"a": 0, "b": 0}, {"a": 0.5, "b": 0.5})
    assert result["kl"] is None and result["chi2_p"] is None and result["total"] == 0


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 20)[0] == 0.0


def test_agreement_counts_sure_units_of_values_it_reads():
    pairs = [("red", "red"), ("red", None), ("blue", "red"), ("blue", "blue"), ("olive", "red")]
    result = agreement_metrics(pairs, ("red", "blue"))
    assert (result["units"], result["sure"], result["agree"], result["unsure"], result["not_read"]) == (5, 3, 2, 1, 1)
    assert result["confusion"] == {"red": {"red": 1, "unsure": 1}, "blue": {"red": 1, "blue": 1},
                                   "olive": {"red": 1}}
    assert result["ci95"] == pytest.approx(wilson_interval(2, 3))
    assert agreement_metrics([], ("red", "blue")) is None


def test_fail_on_rules_parse_and_fire_exactly_past_the_limit():
    rules = parse_fail_on(["kl>0.05,suppressed>=0.01", "chi2_p<0.001"])
    assert [str(r) for r in rules] == ["kl>0.05", "suppressed>=0.01", "chi2_p<0.001"]
    checks = evaluate(rules, {"kl": 0.05, "suppressed": 0.01, "chi2_p": None})
    # chi2_p was not measured: a gate must not pass on what it could not see.
    assert [c["failed"] for c in checks] == [False, True, True]
    assert checks[2]["value"] is None
    assert evaluate(parse_fail_on(["kl>0.05"]), {"kl": math.inf})[0]["failed"]


@pytest.mark.parametrize("text", ["kl", "kl>>1", "nonsense>1", "kl>abc"])
def test_bad_fail_on_rules_are_user_errors(text):
    with pytest.raises(UserError, match="--fail-on"):
        parse_fail_on([text])


def test_spec_reads_recipe_sections_defensively():
    recipe = {
        "balance": [{"attribute": "colour", "values": {"red": 2, "green": 1, "blue": 1}, "applies_to": None},
                    {"attribute": "colour", "values": {"red": 1, "green": 1}, "applies_to": ["square"]}],
        "suppress": [{"concept": "text", "method": "reject", "threshold": None}],
        "audit": {"margin": 0.2, "attributes": [{"name": "light", "values": ["day", "night"],
                                                 "templates": ["a photo at {value}"]}]},
    }
    spec = spec_from_recipe(recipe)
    colour = next(a for a in spec.attributes if a.name == "colour")
    assert colour.target_for("circle", None) == {"red": 0.5, "green": 0.25, "blue": 0.25}
    assert colour.target_for("square", None) == {"red": 0.5, "green": 0.5, "blue": 0.0}
    assert spec.margin == 0.2 and spec.concepts[0].threshold == 0.5
    assert [a.name for a in spec.attributes] == ["light", "colour"]
    assert spec_from_recipe({}).attributes == ()
    override = spec_from_recipe(recipe, attributes=[parse_attribute_option("colour=red, blue")])
    colour = next(a for a in override.attributes if a.name == "colour")
    assert colour.values == ("red", "blue") and colour.target_for("x", None) == pytest.approx({"red": 2 / 3, "blue": 1 / 3})


@pytest.mark.parametrize("text", ["colour", "colour=red", "=red,blue"])
def test_bad_attribute_options_are_user_errors(text):
    with pytest.raises(UserError, match="--attribute"):
        parse_attribute_option(text)
