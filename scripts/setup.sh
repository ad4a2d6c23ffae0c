#!/usr/bin/env bash
# Creates .venv (when missing) and installs synthgen into it with its test extras.
# Idempotent: it reinstalls only when pyproject.toml changed. Override the interpreter with
# PYTHON=python3.11 and the torch requirements with TORCH_SPEC (default: torch==2.14.1
# torchvision==0.29.1, which pip takes from local disk on the project's build machines).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.synthgen-installed
wanted="$(sha256sum pyproject.toml | cut -c1-16) $torch_spec"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "setting up .venv (torch, diffusers, transformers, webdataset, ...)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # shellcheck disable=SC2086  # the spec is a list of requirements
  .venv/bin/python -m pip install -q $torch_spec
  .venv/bin/python -m pip install -q -e ".[test,ray]"
  echo "$wanted" > "$stamp"
fi
