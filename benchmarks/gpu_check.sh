#!/usr/bin/env bash
# The GPU check on a fresh CUDA machine: install what it needs, then benchmarks/gpu_check.py with this
# script's arguments. The check itself takes at most 8 minutes; the install is not counted in them.
# Without an NVIDIA driver (nvidia-smi) it stops before installing anything, unless --dry-run.
#
# Where python3 (or $PYTHON) already imports torch, as on GPU images and Colab, that Python and its
# CUDA build of torch are used as they are, and the package goes in beside them. Elsewhere .venv is
# used, made if missing, with torch from the CUDA index unless it has one (TORCH_INDEX: pick the CUDA
# version the driver supports).
# Then `pip install -e .` and pytest (for the CUDA tests), keeping whatever already satisfies them.
#
#   WHEELHOUSE=dir   install from that folder's wheels alone, for a machine without internet
#                    (docs/benchmarks.md says how to fill it on a machine with internet)
#   SKIP_INSTALL=1   install nothing but a missing torch: the package is installed already
#   --dry-run        (gpu_check.py's) every part on the CPU: checks the install and the plumbing
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"
sources=() torch_sources=(--index-url "$TORCH_INDEX")
if [ -n "${WHEELHOUSE:-}" ]; then
    sources=(--no-index --find-links "$WHEELHOUSE") torch_sources=(--no-index --find-links "$WHEELHOUSE")
fi
dry_run=0
for argument in "$@"; do
    case "$argument" in --dry-run | --smoke) dry_run=1 ;; esac
done
# Before anything is installed: a machine without a GPU driver gets a CUDA build of torch for nothing.
if [ "$dry_run" = 0 ] && ! command -v nvidia-smi >/dev/null; then
    echo "gpu_check.sh: no NVIDIA driver here (nvidia-smi not found); --dry-run checks the plumbing on a CPU" >&2
    exit 1
fi

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    PYTHON=.venv/bin/python
fi
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    # First, so that the package's lower bound on torch is already met by a CUDA build.
    "$PYTHON" -m pip install --quiet "${torch_sources[@]}" "$TORCH_SPEC"
fi
if [ "$dry_run" = 0 ]; then
    "$PYTHON" -c "import sys, torch
torch.cuda.is_available() or sys.exit('gpu_check.sh: torch ' + torch.__version__ + ' sees no CUDA device')"
fi
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    "$PYTHON" -m pip install --quiet "${sources[@]}" -e . pytest
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PYTHON" benchmarks/gpu_check.py "$@"
