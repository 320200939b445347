#!/usr/bin/env bash
# The CPU mini-reproduction behind the README's results (2 CPU cores: ~1.5 h in all).
#   bash scripts/mini_repro.sh [data|train|eval|prune|figures|all]   (default: all)
# Same tokens, steps and seed for three models at 4 layers / 256 wide / T 256:
# gpt2, ndgpt2 and the equal-parameter dense control gpt2-mlp1536. A stage that was cut off
# continues where it stopped (training resumes from its newest checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${NDGPT2_SHARED_DATA:-../shared/data}
HELLA="$SHARED/hellaswag/hellaswag_val_llamacpp_derived.jsonl"
OUT=logs/mini
read -r -a MODELS <<< "${ONLY:-gpt2 ndgpt2 gpt2-mlp1536}"  # ONLY="gpt2" runs one model
SIZE=(--n-layer 4 --n-head 4 --n-embd 256 --seq-len 256)
stage=${1:-all}

if [[ $stage == data || $stage == all ]]; then
  python data/fineweb.py --input "$SHARED"/text_corpus/*.txt --strip-gutenberg --val-docs 4 --seed 0 \
    --out-dir data/prose --prefix prose --shard-size 10000000
fi

if [[ $stage == train || $stage == all ]]; then
  for m in "${MODELS[@]}"; do
    resume=(); [[ -f $OUT/$m/log.txt ]] && resume=(--resume)
    python experiment/train_gpt.py --model "$m" --preset smoke --data data/prose --out-dir "$OUT/$m" "${SIZE[@]}" \
      --micro-batch 16 --total-batch 8192 --max-steps 160 --warmup-steps 16 --lr 1e-3 --min-lr 1e-4 \
      --eval-every 40 --val-batches 10 --hellaswag "$HELLA" --hellaswag-limit 200 --seed 1337 \
      --keep-checkpoints 1 "${resume[@]}"
  done
fi

last_ckpt() { ls "$OUT/$1"/model_*.pt | sort | tail -n 1; }

if [[ $stage == eval || $stage == all ]]; then
  for m in "${MODELS[@]}"; do  # dense models: all 10,042 HellaSwag examples (bf16 autocast)
    [[ -f $OUT/$m/eval_full.json ]] && continue
    python experiment/test_gpt.py --ckpt "$(last_ckpt "$m")" --data data/prose --batches 40 --amp \
      --hellaswag "$HELLA" --json "$OUT/$m/eval_full.json"
  done
fi

if [[ $stage == prune || $stage == all ]]; then
  # Wanda and magnitude at 50% and 2:4; val loss on 20 x 8 x 256 val tokens, HellaSwag on the first
  # 2,000 examples. The dense ("before") metrics are measured once per model and reused.
  mkdir -p "$OUT/pruning"
  for m in "${MODELS[@]}"; do
    first=""
    for method in wanda magnitude; do
      for setting in "--sparsity 0.5" "--nm 2:4"; do
        tag=$([[ $setting == --nm* ]] && echo 2of4 || echo 50pct)
        report="$OUT/pruning/$m-$method-$tag.json"
        reuse=(); [[ -n $first ]] && reuse=(--before-json "$first")
        if [[ ! -f $report ]]; then
          # shellcheck disable=SC2086
          python pruning/wanda.py --ckpt "$(last_ckpt "$m")" --data data/prose --method "$method" $setting \
            --calib-samples 128 --val-batches 20 --hellaswag "$HELLA" --limit 2000 --seed 0 \
            --json "$report" "${reuse[@]}"
        fi
        first=${first:-$report}
      done
    done
  done
fi

if [[ $stage == figures || $stage == all ]]; then
  bash scripts/make_figures.sh
fi
