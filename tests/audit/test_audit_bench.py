"""bench/audit_throughput.py --small runs end to end on the CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "audit_throughput.py"


def test_small_benchmark_reports_images_per_second(capsys):
    spec = importlib.util.spec_from_file_location("audit_throughput_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--small", "--images", "12", "--sizes", "48", "--batch-size", "4", "--device", "cpu"])
    assert results[0]["images"] == 12 and results[0]["images_per_second"] > 0
    assert "images/s" in capsys.readouterr().out
