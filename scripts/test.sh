#!/usr/bin/env bash
# Set up, then run the test suite (tiny random models on the CPU, no network).
# Extra arguments go to pytest, e.g. scripts/test.sh -k resume
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
