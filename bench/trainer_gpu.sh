#!/usr/bin/env bash
# bench/trainer_vs_trl.py on a lent GPU machine (issue 17): prepare here, then main and options there:
#
#   bench/trainer_gpu.sh prepare          here: the demo tokenizer and the wheels the GPU image lacks, into .gpu-bench/
#   bench/trainer_gpu.sh main             there: Tunery against plain TRL and TRL's best, 1B shape, peak GPU memory
#   bench/trainer_gpu.sh options          there: each speed-up on its own against Tunery as it is (the variant)
#   bench/trainer_gpu.sh run ARGS...      there: one bench/trainer_vs_trl.py run with the GPU defaults and ARGS
#
# The GPU image has CUDA torch, transformers, peft, accelerate and Triton, but no trl, datasets, pydantic or
# liger-kernel, no demo model and no network: `prepare` downloads the wheels of the versions this checkout's .venv runs
# (23 MB), which the device tool carries (`carry: [".gpu-bench"]`). `main` takes a few minutes (the 1B model is
# made in about 30 s, then three trainers, then three peak-memory processes); `options` about as long. Each prints
# what bench/trainer_vs_trl.py prints. DEVICE, SHAPE, STEPS, BATCH and MAX_LENGTH override the GPU defaults, so that the
# same script runs on the CPU as a check: DEVICE=cpu SHAPE=256,2,4,2,512 STEPS=3 BATCH=4 MAX_LENGTH=512
# PY=.venv/bin/python (PY: the Python to run; the carried wheels are installed only where it lacks trl).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.gpu-bench
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-1b}
STEPS=${STEPS:-30}
BATCH=${BATCH:-32}
MAX_LENGTH=${MAX_LENGTH:-1024}
PY=${PY:-python3}

prepare() {
    local demo=${TUNERY_DEMO_DIR:-$HOME/.cache/tunery/models/smollm2-135m-instruct}
    if [ ! -f "$demo/tokenizer.json" ]; then
        .venv/bin/python -m trainer.models prepare-demo --out "$demo"
    fi
    mkdir -p "$DIR/tok" "$DIR/whl"
    cp "$demo"/{tokenizer.json,tokenizer_config.json,chat_template.jinja} "$DIR/tok/"
    # The versions .venv runs, for the image's Python 3.12; liger-kernel (pure Python) for use_liger_kernel.
    local pins
    pins=$(.venv/bin/python -m pip list --format=freeze 2>/dev/null |
        grep -iE '^(trl|datasets|dill|multiprocess|pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|transformers|peft|regex)==' |
        tr '\n' ' ')
    # shellcheck disable=SC2086
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$DIR/whl" $pins liger-kernel==0.8.5
    du -sh "$DIR"
}

install() {  # the carried wheels, where $PY lacks trl (this checkout's .venv has them all)
    export PYTHONUNBUFFERED=1 PYTHONPATH=.
    if $PY -c "import trl" 2>/dev/null; then
        return
    fi
    if [ ! -f /tmp/site/.done ]; then
        $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$DIR"/whl/*.whl
        touch /tmp/site/.done
    fi
    export PYTHONPATH=/tmp/site:.
}

bench() {
    local model_dir=()
    [ -f "$DIR/tok/tokenizer.json" ] && model_dir=(--model-dir "$DIR/tok")
    $PY bench/trainer_vs_trl.py --device "$DEVICE" --shape "$SHAPE" --batch-size "$BATCH" --best-rows auto \
        --max-length "$MAX_LENGTH" "${model_dir[@]}" "$@"
}

case "${1:-}" in
prepare) prepare ;;
run) # one bench/trainer_vs_trl.py run with the GPU defaults and these arguments
    shift
    install
    bench "$@"
    ;;
main)
    install
    bench --steps "$STEPS" --memory-steps 3
    ;;
options)
    install
    steps=$((STEPS < 12 ? STEPS : 12))
    # Each one against Tunery as it is, taking turns, and peak memory of each alone (--memory-steps 2); one that
    # fails, or runs past 5 minutes, is reported and the next one runs.
    each() { timeout 300 bash "$0" run --steps "$steps" "$@" || echo "# exit $?: $*"; }
    each --only tunery variant --variant-arg use_liger_kernel=true
    each --only tunery variant --variant-attention flex_attention
    each --only tunery variant --variant-arg optim=adamw_torch --no-memory
    # torch.compile starts threads of its own, which slow a trainer taking turns beside it: one run each.
    each --only variant --variant-arg torch_compile=true --no-memory
    each --only tunery --no-memory
    # TRL's best with Liger too: what it gives TRL.
    each --only trl-best tunery --trl-arg use_liger_kernel=true --no-memory
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
