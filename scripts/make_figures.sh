#!/usr/bin/env bash
# Regenerate the figures and tables of the original NdGPT-2 runs (logs/original/plots) from the seed
# logs in ../shared/data/seed_logs (seconds, no training). The CPU study's figures are made by
# `bash scripts/mini_repro.sh figures`, which calls experiment/compare.py the same way.
set -euo pipefail
case $# in
  0) ;;
  *) if [[ $1 == -h || $1 == --help ]]; then sed -n '2,4p' "$0" | cut -c3-; exit 0; fi
     echo "usage: $0   (no arguments; env NDGPT2_SHARED_DATA: the shared data folder)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
SHARED=${NDGPT2_SHARED_DATA:-../shared/data}
# 524,288 tokens per optimizer step in all three original runs (B x T=1024 x accumulation x GPUs)
python experiment/compare.py "$SHARED"/seed_logs/GPT2-124M-log.txt "$SHARED"/seed_logs/ndgpt2-96M-log.txt \
  "$SHARED"/seed_logs/NdGPT2-82M-log.txt --labels "GPT-2 124M" "NdGPT-2 96M" "NdGPT-2 82M" --smooth 0.99 \
  --tokens-per-step 524288 --out-dir logs/original/plots --force
