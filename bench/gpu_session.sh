#!/usr/bin/env bash
# Everything a short lent GPU session measures, in one command from the repository root:
#
#     OUT=bench/results bash bench/gpu_session.sh [MINUTES]      # default 8
#
# 1. The science run (bench/gpu_learning.py): the real 128³ Exp2 at the shipped settings, the shipped
#    start and the ladder's best start at once, for about 70 % of MINUTES -> $OUT/gpu_learning.json.
# 2. The performance set (bench/run_gpu.py --session) in what is left: the shipped training loop, the
#    shipped step against fused AdamW, a host-pinned set and max-autotune, and the per-layer times
#    -> $OUT/gpu.json.
# Both rewrite their JSON as they go, so a session stopped by its time limit still returns what it
# measured. docs/PERFORMANCE.md and docs/LEARNING.md are rendered from the files afterwards, here:
#     .venv/bin/python bench/run_gpu.py --render bench/results/gpu.json
#
# A machine with torch and the scientific stack but without network gets the rest from the
# git-ignored .wheels/ (see bench/gpu_learning.py --list-wheels), installed into /tmp/site.
set -euo pipefail

minutes=${1:-8}
out=${OUT:-bench/results}
python=${PYTHON:-python3}
start=$(date +%s)
mkdir -p "$out"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$python" -c "import monai, nibabel, nilearn, pydantic" 2>/dev/null; then
    ls .wheels/*.whl >/dev/null || { echo "no .wheels/: see bench/gpu_learning.py --list-wheels" >&2; exit 2; }
    "$python" -m pip install --quiet --no-index --no-deps --target /tmp/site .wheels/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
# Fail here, within seconds, rather than minutes into the run.
"$python" -c "import vae_dynamics.training.trainer, torch; assert torch.cuda.is_available(), 'no CUDA device'"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

science=$(awk -v m="$minutes" 'BEGIN { printf "%.1f", 0.7 * m }')
"$python" bench/gpu_learning.py --minutes "$science" --out "$out/gpu_learning.json" \
    || echo "gpu_learning.py exited with $?; the performance set runs anyway" >&2

left=$(awk -v m="$minutes" -v s="$start" -v now="$(date +%s)" 'BEGIN { printf "%.1f", m - (now - s) / 60 }')
"$python" bench/run_gpu.py --session --no-doc --workers "$(nproc)" --minutes "$left" --out "$out/gpu.json"
echo "gpu_session: $(( ($(date +%s) - start) / 60 )) min"
