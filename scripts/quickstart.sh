#!/usr/bin/env bash
# The quickstart: set up, generate recipes/quickstart.yaml offline on the CPU into
# out/quickstart, and write a contact sheet of what was made. Rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/synthgen generate recipes/quickstart.yaml --out out/quickstart --device cpu "$@"
.venv/bin/synthgen inspect out/quickstart --contact-sheet out/quickstart/contact-sheet.png
