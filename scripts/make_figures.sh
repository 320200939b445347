#!/usr/bin/env bash
# Regenerate every figure and table in the README from the committed logs (seconds, no training).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${NDGPT2_SHARED_DATA:-../shared/data}
python experiment/compare.py logs/mini/gpt2/log.txt logs/mini/ndgpt2/log.txt logs/mini/gpt2-mlp1536/log.txt \
  --labels gpt2 ndgpt2 gpt2-mlp1536 --pruning logs/mini/pruning/*.json \
  --evals logs/mini/gpt2/eval_full.json logs/mini/ndgpt2/eval_full.json logs/mini/gpt2-mlp1536/eval_full.json \
  --out-dir logs/mini/plots
python experiment/compare.py "$SHARED"/seed_logs/GPT2-124M-log.txt "$SHARED"/seed_logs/ndgpt2-96M-log.txt \
  "$SHARED"/seed_logs/NdGPT2-82M-log.txt --labels "GPT-2 124M" "NdGPT-2 96M" "NdGPT-2 82M" --smooth 0.99 \
  --out-dir logs/original/plots
