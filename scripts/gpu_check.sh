#!/usr/bin/env bash
# Issue 10's GPU figures in one call of at most ~9 minutes, most valuable piece first.
#
# On the GPU machine (no internet; python3 is 3.12 with jax[cuda], flax, optax, orbax, torch),
# from the repository root, with .device/ carried (device_env.py, whl/, torch_reference.py):
#
#     bash scripts/gpu_check.sh            # JSON lines -> $OUT/gpu.jsonl, full log -> $OUT/gpu.log
#
# Every piece runs under `timeout`, and never past the deadline (GPU_CHECK_SECONDS, default 520
# s after the install): one slow piece cannot eat the rest, and a piece with under 30 s left is
# skipped (a {"bench": "gpu_check", "skipped": true} line says so). Each piece ends with a
# {"bench": "gpu_check", "piece": ..., "rc": ..., "wall_s": ...} line (rc 124: timed out).
# Knobs: GPU_CHECK_SECONDS, PAPER_SCALE (default 0.05 of the 112,120 images), WORKERS (grain).
#
# JAX keeps half the GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION=0.5): benchmark.py train runs
# the PyTorch reference in a child process while the JAX process still holds its pool, and with
# JAX's default 75% the reference's DenseNet rows would not fit beside it.
set -o pipefail
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
JSONL=$OUT/gpu.jsonl
LOG=$OUT/gpu.log
TOTAL=${GPU_CHECK_SECONDS:-520}
SCALE=${PAPER_SCALE:-0.05}
WORKERS=${WORKERS:-12}
TORCH=.device/torch_reference.py
SCRATCH=$(mktemp -d /tmp/gpu_check.XXXXXX)

# cxrjax.io.fileio needs google-crc32c, which device_env.py does not carry: download its cp312
# wheel into .device/whl too (pip download --only-binary=:all: --python-version 3.12 ...).
python3 -m pip install -q --no-index --no-deps .device/whl/google_crc32c*.whl >"$OUT/install.log" 2>&1
python3 .device/device_env.py install .device/whl >>"$OUT/install.log" 2>&1 \
    || { echo "wheel install failed:"; tail -20 "$OUT/install.log"; exit 1; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
} 2>&1 | tee -a "$LOG"

START=$SECONDS
# piece NAME LIMIT_S COMMAND...: COMMAND under `timeout`, cut to the time left before the deadline.
piece() {
    local name=$1 limit=$2
    shift 2
    local left=$((TOTAL - (SECONDS - START)))
    if ((left < 30)); then
        echo "== $name: skipped, ${left}s left" | tee -a "$LOG"
        echo "{\"bench\": \"gpu_check\", \"piece\": \"$name\", \"skipped\": true}" >>"$JSONL"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG" | grep --line-buffered '^{'
    local rc=${PIPESTATUS[0]}  # the piece's own status (124: timed out), not grep's
    echo "{\"bench\": \"gpu_check\", \"piece\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0))}" \
        | tee -a "$JSONL"
}

BENCH=(python3 scripts/benchmark.py --out "$JSONL")
TRAIN=(--batch 256 --size 224 --dtype bfloat16 --steps 30 --warmup 5 --torch-reference "$TORCH"
       --torch-compile both --torch-timeout 120)

# 1. DenseNet121's compile time, the open question: its dense blocks scanned in chunks of 8
#    layers (model.dense_scan_chunk: the same parameters and outputs, 8 programs instead of 58),
#    then unrolled (58 distinct 1x1 convolutions to compile and autotune) beside PyTorch.
#    warmup_s holds the compile time plus the warm-up steps.
piece train_d121_scan8 150 "${BENCH[@]}" train --configs d121 --set model.dense_scan_chunk=8 \
    --batch 256 --size 224 --dtype bfloat16 --steps 30 --warmup 5
piece train_d121 180 "${BENCH[@]}" train --configs d121 "${TRAIN[@]}"
# 2. Time to first step, cold and warm, per jitted function (train, eval, predict, Grad-CAM).
piece compile_d121_scan8 120 "${BENCH[@]}" compile --configs d121 --set model.dense_scan_chunk=8 \
    --batch 256 --size 224
piece compile_r18_msml 80 "${BENCH[@]}" compile --configs r18_msml --batch 256 --size 224
# 3. The R18 rows' train step beside PyTorch eager and compiled, same call.
piece train_r18 170 "${BENCH[@]}" train --configs r18_msml,r18 "${TRAIN[@]}"
# 4. Without XLA's autotuning: is the per-convolution autotuning the cause of the compile time?
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" \
    piece train_d121_autotune0 120 "${BENCH[@]}" train --configs d121 --batch 256 --size 224 \
    --dtype bfloat16 --steps 30 --warmup 5
# 5. The whole paper run (9 epochs, validation each epoch, 1,000-resample bootstrap, report).
piece paper_run_r18_msml 150 "${BENCH[@]}" paper-run --config r18_msml --scale "$SCALE" \
    --batch 256 --workers "$WORKERS" --workdir "$SCRATCH/paper_run" --data-root "$SCRATCH/data"
# 6. The paper's best row (batch 128), scanned, beside PyTorch, if time is left.
piece train_d121_vgg_msml 150 "${BENCH[@]}" train --configs d121_vgg_msml --batch 128 \
    --set model.dense_scan_chunk=8 --size 224 --dtype bfloat16 --steps 30 --warmup 5 \
    --torch-reference "$TORCH" --torch-compile both --torch-timeout 100

rm -rf "$SCRATCH"
echo "== done in $((SECONDS - START)) s; $(grep -c '' "$JSONL") lines in $JSONL" | tee -a "$LOG"
