#!/usr/bin/env bash
# The quickstart: set up, generate recipes/quickstart.yaml offline on the CPU into
# out/quickstart, and write a contact sheet of what was made. Rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# PyTorch's two CPU threads (--cpu-threads 2) otherwise spin while they wait for each other: on
# a busy machine, 112 images took 128 s so, 24 s on one thread, 16 s passive (docs/BENCHMARKS.md).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
.venv/bin/synthgen generate recipes/quickstart.yaml --out out/quickstart --device cpu "$@"
.venv/bin/synthgen inspect out/quickstart --contact-sheet out/quickstart/contact-sheet.png
