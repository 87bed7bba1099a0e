#!/usr/bin/env bash
# The GPU check on a fresh CUDA machine: install as .ci/run does, except torch, which comes from the CUDA
# index (TORCH_INDEX; pick the CUDA version the machine's driver supports), then benchmarks/gpu_check.py
# with this script's arguments. SKIP_INSTALL=1 reuses an installed .venv. The check itself takes at
# most 8 minutes; the install is not counted in them.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    python3 -m venv .venv
    . .venv/bin/activate
    python -m pip install --quiet --upgrade pip
    # First, so that requirements.txt's lower bound is already met by a CUDA build.
    python -m pip install --quiet "$TORCH_SPEC" --index-url "$TORCH_INDEX"
    python -m pip install --quiet -r requirements.txt
    python -m pip install --quiet -e ".[deepspeed]"
else
    . .venv/bin/activate
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -c "import torch; assert torch.cuda.is_available(), 'torch ' + torch.__version__ + ' sees no CUDA device'"
exec python benchmarks/gpu_check.py "$@"
