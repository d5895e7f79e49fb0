#!/usr/bin/env bash
# GPU check (under 5 minutes on one GPU): fine-tunes a few hundred steps with AMP on CUDA, embeds every dog
# photo with CPU and GPU (nvJPEG) JPEG decoding, reports steps/s and images/s, and checks that CUDA and CPU
# embeddings agree (cosine >= 0.999). Results: runs/gpu_check/gpu_check.{json,md}.
#
#   bench/gpu_check.sh [--data DIR] [--out DIR] [--steps N] [--sample N]
#
# Without CUDA it stops at once with exit code 2 and says why. PYTHON picks the interpreter (default: the
# project's .venv, else python3); the project is imported from this checkout, installed or not.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
else
    echo "gpu_check: nvidia-smi not found (no NVIDIA driver on this machine?)" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-300}" "$py" -m bench.gpu_check "$@"
