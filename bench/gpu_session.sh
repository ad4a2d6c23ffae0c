#!/usr/bin/env bash
# One prepared run of every GPU measurement the issues ask for, for a session lent a GPU.
# Budget: at most 9 minutes on an H100/H200 (inside one 10-minute call), results in $OUT.
#
# Before the call, here (no GPU needed), fetch the pure-Python packages the GPU machine lacks
# (see /work/.library/device/README.md), e.g.:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 webdataset==1.0.2 braceexpand pydantic pydantic-core annotated-types \
#     typing-inspection   (the image has torch, transformers, click, tqdm, pyyaml, safetensors)
# then call the device tool with carry [".whl"] and the command:  bash bench/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD}
out=${OUT:-/tmp/synthgen-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# Every timeout below adds up to 540 s (tests/test_bench.py checks it), leaving a minute of the
# 600 s call for the install, nvidia-smi and start-up; what the issue gates (sd-turbo full VAE
# and tiny decoder, SDXL-turbo, the audit) runs first, so a slow compile costs the extras.
run() {  # name, seconds, then bench/throughput.py arguments
  local name=$1 seconds=$2; shift 2
  echo "== $name"
  timeout "$seconds" python3 bench/throughput.py --work /tmp/synthgen-bench "$@" > "$out/$name.json" \
    2> "$out/$name.err" || echo "$name failed or timed out: see $name.err"
  tail -n 12 "$out/$name.json"
}
run sd-turbo-full       120 --arch sd-turbo --images 2048 --batch-size 64 --compile
run sd-turbo-tiny        90 --arch sd-turbo --images 4096 --batch-size 64 --compile --decoder tiny
run sdxl-turbo-full     120 --arch sdxl-turbo --images 1024 --batch-size 32 --compile
# Issue 8: audit throughput with the ViT-B/32 architecture (random weights), 512 px JPEGs.
echo "== audit-vit-b32"
timeout 90 python3 bench/audit_throughput.py --device cuda --images 20000 --sizes 512 \
  --batch-size 512 --repeat 3 > "$out/audit-vit-b32.txt" 2> "$out/audit-vit-b32.err" \
  || echo "audit benchmark failed or timed out: see audit-vit-b32.err"
tail -n 8 "$out/audit-vit-b32.txt"
run sd-turbo-4step       60 --arch sd-turbo --images 1024 --batch-size 64 --steps 4
run sd-turbo-guided      60 --arch sd-turbo --images 1024 --batch-size 32 --steps 4 --guidance 5
