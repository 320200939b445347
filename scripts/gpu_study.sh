#!/usr/bin/env bash
# A GPU study that fits ~10 minutes of one H100/H200: gpt2, ndgpt2 and gpt2-mlp1536 at the full
# 12-layer / 768 size, T 1024, the same token budget each (~2.5 min of training per model at ~400k tok/s),
# then full HellaSwag (both conventions), Wanda and per-layer magnitude at 50% and 2:4, and the plots.
#
#   bash scripts/gpu_study.sh [all|train|eval|prune|figures]       (default: all)
#
# Env: DATA (token shards; default data/edu_fineweb10B if present, else data/prose built from the shared
# Gutenberg books), HELLASWAG (jsonl), TOKENS (per model, default 62,914,560 = 240 steps of 262,144),
# VAL_BATCHES (val batches of 32 x 1024 tokens: 64 on FineWeb-EDU, 16 on the books),
# OUT (default logs/gpu), ONLY (models). TINY=1 shrinks everything to a seconds-long CPU check of the
# logic (tests/test_scripts.py runs it). tokens/s and MFU of every run land in its summary.json.
set -euo pipefail
case ${1:-all} in
  all | train | eval | prune | figures) ;;
  -h | --help) sed -n '2,12p' "$0" | cut -c3-; exit 0 ;;
  *) echo "usage: $0 [all|train|eval|prune|figures]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
SHARED=${NDGPT2_SHARED_DATA:-../shared/data}
OUT=${OUT:-logs/gpu}
read -r -a MODELS <<< "${ONLY:-gpt2 ndgpt2 gpt2-mlp1536}"
HELLASWAG=${HELLASWAG:-$SHARED/hellaswag/hellaswag_val_llamacpp_derived.jsonl}
if [[ -z ${DATA:-} ]]; then
  DATA=data/edu_fineweb10B
  if [[ ! -d $DATA ]]; then
    DATA=data/prose
    python data/fineweb.py --input "$SHARED"/text_corpus/*.txt --strip-gutenberg --val-docs 4 --seed 0 \
      --out-dir "$DATA" --prefix prose --shard-size 10000000
  fi
fi
if [[ -n ${TINY:-} ]]; then  # the same stages on a 2-layer, 32-wide model for a few steps on the CPU
  SIZE=(--n-layer 2 --n-head 2 --n-embd 32 --block-size 64 --seq-len 64)
  BATCH=(--micro-batch 2 --total-batch 256) STEPS=${STEPS:-4} EVAL_EVERY=2 VAL_TOKENS=256
  FINAL=(--batches 2 --micro-batch 2 --seq-len 64 --limit 8) PRUNE_VAL=(--val-batches 2 --val-batch-size 2)
  CALIB=(--calib-samples 4 --calib-len 64) RUNTIME=(--device cpu --no-amp --no-compile) EVAL_RT=(--device cpu --no-amp)
else
  SIZE=(--seq-len 1024)
  BATCH=(--micro-batch 64 --total-batch 262144)
  # val tokens: 2,097,152 of FineWeb-EDU's 100M-token val shard; 524,288 of the books' 589,198 (no batch twice)
  VAL_BATCHES=${VAL_BATCHES:-$([[ $DATA == *edu_fineweb10B ]] && echo 64 || echo 16)}  # of 32 x 1024 tokens
  STEPS=${STEPS:-$(( ${TOKENS:-62914560} / 262144 ))} EVAL_EVERY=60 VAL_TOKENS=$(( VAL_BATCHES * 32768 ))
  FINAL=(--batches "$VAL_BATCHES" --micro-batch 32 --seq-len 1024 --limit 0)
  PRUNE_VAL=(--val-batches "$VAL_BATCHES" --val-batch-size 32)
  CALIB=(--calib-samples 128 --calib-len 1024) RUNTIME=(--compile) EVAL_RT=()
fi
WARMUP=$(( STEPS / 10 > 0 ? STEPS / 10 : 1 ))
stage=${1:-all}
final_ckpt() { printf '%s/runs/%s/model_%05d.pt' "$OUT" "$1" "$STEPS"; }

if [[ $stage == train || $stage == all ]]; then
  for m in "${MODELS[@]}"; do
    [[ -f $OUT/runs/$m/summary.json ]] && continue
    resume=(); compgen -G "$OUT/runs/$m/model_*.pt" > /dev/null && resume=(--resume)
    python experiment/train_gpt.py --model "$m" --preset gpt2-124m --data "$DATA" --out-dir "$OUT/runs/$m" \
      "${SIZE[@]}" "${BATCH[@]}" --max-steps "$STEPS" --warmup-steps "$WARMUP" --eval-every "$EVAL_EVERY" \
      --val-tokens "$VAL_TOKENS" --no-hellaswag --keep-checkpoints 1 --full-checkpoints 1 --seed 1337 \
      "${RUNTIME[@]}" "${resume[@]}"
  done
fi

if [[ $stage == eval || $stage == all ]]; then
  mkdir -p "$OUT/eval"
  for m in "${MODELS[@]}"; do  # full HellaSwag in both conventions, val loss on held-out tokens
    [[ -f $OUT/eval/$m.json ]] && continue
    python experiment/test_gpt.py --ckpt "$(final_ckpt "$m")" --data "$DATA" "${FINAL[@]}" --hellaswag "$HELLASWAG" \
      --hellaswag-convention both "${EVAL_RT[@]}" --json "$OUT/eval/$m.json"
  done
fi

if [[ $stage == prune || $stage == all ]]; then
  for m in "${MODELS[@]}"; do  # val loss only; the dense numbers are measured once per model
    python pruning/sweep.py --ckpt "$(final_ckpt "$m")" --data "$DATA" --methods wanda magnitude-layer \
      --sparsities 0.5 --nm 2:4 "${PRUNE_VAL[@]}" "${CALIB[@]}" "${EVAL_RT[@]}" --seed 0 \
      --out-dir "$OUT/sweep/$m"
  done
fi

if [[ $stage == figures || $stage == all ]]; then
  logs=() labels=()
  for m in "${MODELS[@]}"; do logs+=("$OUT/runs/$m/log.txt"); labels+=("$m"); done
  python experiment/compare.py "${logs[@]}" --labels "${labels[@]}" --pruning "$OUT"/sweep/* \
    --evals "$OUT"/eval/*.json --out-dir "$OUT/plots" --force
fi
