#!/usr/bin/env bash
# The GPU check of BENCHMARKS.md, prepared for a lent device machine (one CUDA GPU): training steps of config (a)
# in fp32 and bf16 (tokens/s, MFU) and full ResNet-18 embedding. Writes $OUT/gpu.json (or benchmarks/results/).
# Needs a CUDA build of torch on that machine; ~2-4 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
"$PYTHON" benchmarks/gpu_check.py --output "${OUT:-benchmarks/results}/gpu.json" "$@"
