"""The audit's p-values and intervals hold their stated levels on data that follows the target.

Simulation: many small datasets whose groups draw their colour from the target, read by a
perfect classifier (each view embeds exactly as its colour's text). Under this null a 5% test
must fire about 5% of the time and a 95% interval must cover the true share about 95% of the
time, however many views repeat a group's colour. Counting a group's identical views as
independent draws fired 23% (2 views) and 52% (4 views) of the time instead (docs/AUDIT.md).
"""

from __future__ import annotations

import numpy as np
import pytest
from audit_fixtures import MeanColourEncoder

from synthgen.audit.classify import TextEmbeddings
from synthgen.audit.measurements.attributes import measure_attribute
from synthgen.audit.run import EmbeddedView, ViewTable
from synthgen.audit.source import ViewItem
from synthgen.audit.spec import AttributeSpec

TARGET = {"red": 0.5, "green": 0.3, "blue": 0.2}
GROUPS = 40
DATASETS = 500
COLOUR = {"red": 0, "green": 1, "blue": 2}   # MeanColourEncoder's text directions


def _view(key: str, view: int, colour: str, prompt: str, recorded: dict) -> EmbeddedView:
    embedding = np.zeros(52, np.float32)
    embedding[COLOUR[colour]] = 1.0
    item = ViewItem(key=key, view=view, file=f"view{view}.png", shard="shard-000000.tar", data=None,
                    class_name="circle", corner_case=None, strategy="seeds", prompt=prompt,
                    assigned=recorded)
    return EmbeddedView(item, "ok", embedding, False, f"{key}.{view}")


def _dataset(rng: np.random.Generator, views: int, views_differ: bool) -> ViewTable:
    """GROUPS groups of `views` views; a group's colour (or each view's) drawn from TARGET."""
    names = list(TARGET)
    drawn = rng.choice(len(names), size=(GROUPS, views if views_differ else 1), p=list(TARGET.values()))
    table = ViewTable()
    for group, colours in enumerate(drawn):
        key = f"class-circle-{group:06d}"
        for view in range(views):
            if views_differ:
                # The prompt strategy: each view its own modifier, nothing recorded per group.
                colour = names[colours[view]]
                table.add(_view(key, view, colour, f"a circle, {colour} light", {}), sheet_groups=0)
            else:
                colour = names[colours[0]]
                table.add(_view(key, view, colour, f"a {colour} circle", {"colour": colour}),
                          sheet_groups=0)
    table.freeze()
    return table


@pytest.mark.parametrize("views, views_differ", [(1, False), (2, False), (4, False), (4, True)])
def test_chi2_false_alarms_and_interval_coverage_hold_under_the_null(views, views_differ):
    attribute = AttributeSpec(name="colour", values=tuple(TARGET), targets=((None, TARGET),))
    encoder = MeanColourEncoder()
    texts = TextEmbeddings(encoder)
    rng = np.random.default_rng(1000 + views + 10 * views_differ)
    alarms = covered = intervals = 0
    for _ in range(DATASETS):
        overall = measure_attribute(_dataset(rng, views, views_differ), attribute, texts,
                                    encoder.logit_scale, margin=0.1)["scopes"]["overall"]
        assert overall["unsure"] == 0, "the simulated classifier is perfect"
        alarms += overall["chi2_p"] < 0.05
        for value, truth in TARGET.items():
            low, high = overall["proportions"][value]["ci95"]
            covered += low <= truth <= high
            intervals += 1
    assert abs(alarms / DATASETS - 0.05) <= 0.03, f"chi2_p < 0.05 in {alarms} of {DATASETS}"
    assert covered / intervals >= 0.92, f"95% intervals covered the truth {covered} of {intervals} times"
