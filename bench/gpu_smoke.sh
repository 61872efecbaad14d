#!/usr/bin/env bash
# One-GPU smoke test of steelforge's CUDA paths (about 5 minutes on an H200):
#   1. CUDA-only unit tests (Liger fused linear CE, bf16/TF32 precision set-up, Steel kernel patching);
#   2. kernels: Liger on a real Steel model (RMSNorm/RoPE/SwiGLU patched), fused AdamW, bf16 autocast,
#      flash-attention 2 against SDPA (when flash-attn is installed);
#   3. FSDP2 steps of steel-1b at seq 2048 in bf16 with activation checkpointing: tokens/s and MFU
#      (datasheet peak), with the Liger fused cross-entropy and with the chunked one;
#   4. moxin-7b forward + backward at seq 4096 in bf16 with activation checkpointing: peak memory;
#   5. `steelforge pretrain` on the GPU, SIGKILLed after a checkpoint and resumed, against clean runs.
# Every section runs even when an earlier one fails; the exit code is 1 if any failed.
# Usage:  bash bench/gpu_smoke.sh            (from anywhere; PYTHON=... picks the interpreter)
# Without CUDA it stops at once with exit code 2 and says why (bench/gpu_smoke.py --tiny is the CPU dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_smoke: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'torch missing')); run it on a GPU machine with a CUDA build of torch (README, GPU installs)" >&2
    exit 2
fi
"$PY" -c "import torch, transformers; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| transformers', transformers.__version__)"
"$PY" -c "import importlib.metadata as m; print('liger-kernel', m.version('liger-kernel'))" 2>/dev/null || echo "liger-kernel not installed"

failed=()
section() {  # section NAME TIMEOUT_S CMD...
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name"
    if timeout "$limit" "$@"; then
        echo "== $name: ok ($((SECONDS - start)) s)"
    else
        echo "== $name: FAILED (exit $?, $((SECONDS - start)) s)"
        failed+=("$name")
    fi
}

section "CUDA-only tests" 180 "$PY" -m pytest -q -p no:cacheprovider \
    tests/train/test_losses.py tests/train/test_precision.py tests/train/test_gpu_path.py -k "not distributed and not sync"
section "kernels" 120 "$PY" bench/gpu_smoke.py kernels
section "FSDP2 step: steel-1b, seq 2048, bf16" 180 \
    "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 bench/gpu_smoke.py fsdp-step
section "moxin-7b fwd+bwd, seq 4096, bf16, activation checkpointing" 180 "$PY" bench/gpu_smoke.py memory
section "pretrain killed and resumed on the GPU" 180 "$PY" bench/gpu_smoke.py resume

if ((${#failed[@]})); then
    echo "gpu_smoke: FAILED: ${failed[*]}"
    exit 1
fi
echo "gpu_smoke: all checks passed"
