#!/usr/bin/env bash
# Every GPU check and figure of the benchmarks, in one command, for a short lease of a CUDA machine:
#
#     bash benchmarks/gpu_run.sh                     # every step; logs in $OUT (default /tmp/gpu_out)
#     bash benchmarks/gpu_run.sh check online generation   # some steps only
#
# On an H100 (2026-11-26) the steps took: check 26 s, sft 94 s, ops 12 s, preference 138 s; one online
# configuration 54 s for 2 steps and one generation configuration ~39 s for 2 calls, most of it spent building the
# 0.5B model in the configuration's own process. All steps do not fit one 10-minute command: name the ones a lease
# still needs.
#
# In order of priority, each step under its own time limit, so one failure or hang does not cost the others:
# correctness (gpu_check.py), SFT (bench_sft.py; sft-flex: packed, with FlexAttention's document masking), the
# LM-head chunk sweep (bench_ops.py), preference (bench_preference.py), online RL (bench_online.py) and generation
# (bench_generation.py), all on the Qwen2.5-0.5B-shaped random model in bf16 with sdpa attention (unless named).
# Steps are fewer than the scripts' defaults to fit the lease; run a script on its own for its full default.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import sys, torch, transformers, datasets, accelerate, pyarrow; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, \
'accelerate', accelerate.__version__, 'pyarrow', pyarrow.__version__)"
} 2>&1 | tee "$OUT/env.txt"

STEPS=" ${*:-check sft sft-flex ops preference online generation online-padded online-shared} "
FAILED=""

step() {  # step NAME LIMIT_S COMMAND...: stdout in $OUT/NAME.log (printed), stderr appended to $OUT/stderr.txt
    local name=$1 limit=$2 start rc
    shift 2
    [[ $STEPS == *" $name "* ]] || return 0
    start=$(date +%s)
    echo "=== $name: $*" >>"$OUT/stderr.txt"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>"$OUT/$name.err"
    rc=$?
    cat "$OUT/$name.err" >>"$OUT/stderr.txt"
    echo "=== $name: exit $rc in $(($(date +%s) - start)) s (limit $limit s)"
    grep -vE "^\{'" "$OUT/$name.log"  # not the trainers' own log lines
    [ $rc -eq 0 ] || { tail -20 "$OUT/$name.err"; FAILED="$FAILED $name"; }
    rm -f "$OUT/$name.err"
}

step check 90 $PY benchmarks/gpu_check.py
step sft 150 $PY benchmarks/bench_sft.py --device cuda --steps 5 --warmup 2
step sft-flex 150 $PY benchmarks/bench_sft.py --device cuda --steps 5 --warmup 2 --attn flex_attention --only ours-packed
step ops 75 $PY benchmarks/bench_ops.py --device cuda --dtype bfloat16 --calls 3 \
    --shapes 16384x896x151936,4096x896x151936 --budgets 64,128,1024,2048
step preference 170 $PY benchmarks/bench_preference.py --device cuda --steps 4 --warmup 2
step online 200 $PY benchmarks/bench_online.py --device cuda --steps 1 --warmup 1 --only grpo grpo-beta rloo
step generation 200 $PY benchmarks/bench_generation.py --device cuda --calls 2
# the shared-prompt training forward (trl/ops/shared_prompt.py) against one padded row per completion, on a shape
# under its mask cap (2 rows of 511 + 8 x 129 = 1,543 columns; the default 8 prompts x 8 x 256 exceeds the cap and
# runs padded either way)
SHARE_SHAPE="--only grpo --steps 2 --warmup 1 --prompts 2 --num_generations 8 --prompt_len 512-512 --completion_len 128"
step online-padded 150 $PY benchmarks/bench_online.py --device cuda $SHARE_SHAPE --share_prompt_forward false
step online-shared 150 $PY benchmarks/bench_online.py --device cuda $SHARE_SHAPE --share_prompt_forward auto
[ -z "$FAILED" ] || { echo "failed:$FAILED"; exit 1; }
