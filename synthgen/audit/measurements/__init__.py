"""Every audit measurement, registered once, in the order the report shows them.

Each module holds one measurement whole (see base.py for what a `Measurement` owns): adding
one is a new module here and one line below; run.py, report.py, command.py and thresholds.py
loop over `MEASUREMENTS`. README.md's audit section and docs/AUDIT.md name every one
(tests/audit/test_registry.py checks).
"""

from __future__ import annotations

from synthgen.audit.measurements import (attributes, counterfactuals, duplicates, fidelity, integrity,
                                         similarity, suppression)
from synthgen.audit.measurements.base import Measurement

MEASUREMENTS: dict[str, Measurement] = {measurement.name: measurement for measurement in (
    attributes.MEASUREMENT,
    counterfactuals.MEASUREMENT,
    suppression.MEASUREMENT,
    similarity.MEASUREMENT,
    fidelity.MEASUREMENT,
    duplicates.MEASUREMENT,
    integrity.MEASUREMENT,
)}
