"""`--fail-on` rules: `NAME OP NUMBER` checked against the report's summary numbers.

Syntax: `kl>0.05`, `suppressed>=0.01`, `chi2_p<0.001`; several rules comma-separated or in
repeated options. A rule fails when the summary value satisfies the comparison, and also when
the value could not be measured (None: no such attribute or concept, every view unsure): a
gate in a pipeline must not pass on a dataset it did not measure.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from synthgen.audit.measurements import MEASUREMENTS
from synthgen.errors import UserError

# name -> what it is, from every measurement in the registry (each computes its own figures).
METRICS = {name: meaning for measurement in MEASUREMENTS.values()
           for name, meaning in measurement.fail_on.items()}
_OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
# Any case, so that a capitalised name is told apart as an unknown metric, not a bad form.
_RULE = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class FailRule:
    metric: str
    op: str
    limit: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.limit:g}"

    def check(self, summary: dict) -> tuple[bool, float | None]:
        value = summary.get(self.metric)
        if value is None:
            return True, None
        return bool(_OPERATORS[self.op](value, self.limit)), value


def parse_fail_on(options: tuple[str, ...] | list[str]) -> list[FailRule]:
    rules = []
    for option in options:
        texts = [part.strip() for part in option.split(",") if part.strip()]
        if not texts:  # a gate that would gate nothing
            raise UserError(f"--fail-on {option!r}: holds no rule; write NAME>NUMBER (or >=, <, "
                            "<=), e.g. --fail-on 'kl>0.05,duplicates>0.001'")
        for text in texts:
            match = _RULE.match(text)
            if not match:
                raise UserError(f"--fail-on {text!r}: write NAME>NUMBER (or >=, <, <=), e.g. "
                                "--fail-on 'kl>0.05,duplicates>0.001'")
            name, op, number = match.groups()
            if name not in METRICS:
                hint = f" (names are lower case: {name.lower()})" if name.lower() in METRICS else ""
                raise UserError(f"--fail-on {text!r}: unknown metric {name!r}{hint}; known: "
                                + ", ".join(METRICS))
            try:
                limit = float(number)
            except ValueError:
                raise UserError(f"--fail-on {text!r}: {number!r} is not a number") from None
            rules.append(FailRule(name, op, limit))
    return rules


def evaluate(rules: list[FailRule], summary: dict) -> list[dict]:
    """One record per rule: the rule, the measured value and whether it failed."""
    results = []
    for rule in rules:
        failed, value = rule.check(summary)
        results.append({"rule": str(rule), "metric": rule.metric, "value": value, "failed": failed})
    return results
