#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run: the triton backend's tests on the compiled kernels
# (the same checks against the float64 spec that run in triton's interpreter without a GPU, plus
# bfloat16 and larger shapes), then `qkv bench --section gpu`. Logs and the JSON go to $1 (default: out/).
# Runs from a checkout with the machine's own torch and triton: PYTHONPATH=src, nothing installed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 QKV_HOME="$(mktemp -d)"
python3 - <<'PY' 2>&1 | tee "$out/environment.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)
print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())
PY
timeout "${QKV_GPU_TEST_S:-240}" python3 -m pytest -q -p no:cacheprovider --maxfail=8 tests/test_triton.py \
    2>&1 | tee "$out/tests.log" | tail -40
timeout "${QKV_GPU_BENCH_S:-300}" python3 -m qkv bench --section gpu --json "$out/gpu.json" ${QKV_GPU_BENCH_ARGS:-} \
    2>&1 | tee "$out/bench.log"
