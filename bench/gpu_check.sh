#!/usr/bin/env bash
# FARM+PixelCNN++ on one NVIDIA GPU in under 10 minutes, unattended, from the repository root after
# `make install`: trains the canonical PixelCNN++ and the k=2 FARM model for a fixed time each, reports
# bits/dim on CIFAR-10 test[:1000], times `sequential` vs `wavefront` sampling for a batch of 16, and
# evaluates inpainting (bench/pixelcnn_gpu_check.py says what exactly). Prints every measurement; exits
# non-zero when anything fails.
#
#   bench/gpu_check.sh                                        # on the GPU
#   GPU_CHECK_DEVICE=cpu bench/gpu_check.sh --tiny            # the same logic at toy size on a CPU
# Extra arguments go to bench/pixelcnn_gpu_check.py. Data: $FARM_DATA_DIR, else shared/data in the
# repository root, else ../shared/data.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=.venv/bin/python
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
if [[ -z "${FARM_DATA_DIR:-}" ]]; then
    FARM_DATA_DIR="$(pwd)/shared/data"
    [[ -d "$FARM_DATA_DIR" ]] || FARM_DATA_DIR="$(cd .. && pwd)/shared/data"
fi
export FARM_DATA_DIR

if [[ ! -x "$PY" ]]; then
    echo "gpu_check: $PY is missing; run 'make install' first" >&2
    exit 2
fi
if [[ "$DEVICE" == cuda ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || {
        echo "gpu_check: nvidia-smi failed: no NVIDIA GPU visible" >&2; exit 2; }
    "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || {
        echo "gpu_check: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device" >&2; exit 2; }
fi

# 570 s: the script's own budget is about 8 minutes; the rest is a safety margin under 10 minutes.
timeout 570 "$PY" bench/pixelcnn_gpu_check.py --device "$DEVICE" "$@"
