#!/usr/bin/env bash
# The CPU study behind the README's results: gpt2, ndgpt2 and the equal-parameter dense control
# gpt2-mlp1536, three seeds each, on shuffled windows of 58 Project Gutenberg books, fp32.
#
#   bash scripts/mini_repro.sh [all|data|runs|figures|horizon|width|remade]      (default: all)
#
# all     = data, then per seed and model: train -> final eval (-> sparsity sweep for seeds 1 and 2), then
#           figures and the README's study tables.
# Every stage continues where it stopped: a finished run, eval or sweep is skipped, a cut-off run resumes
# from its newest checkpoint, a sweep reuses its finished reports. Checkpoints are not committed, so a run
# whose eval/sweep is missing and whose checkpoint is gone (a new checkout) is trained again.
# horizon = issue 23's longer runs: ndgpt2 and gpt2-mlp1536 at the same size for one full epoch of the train
#           split (879 steps, 7.2M tokens, no window repeated), val every 20 steps -> logs/horizon/
# width   = the same pair at 6 layers x 384 wide, today's 160 steps (1.31M tokens) -> logs/width/
#           Both: seeds 1 2 (SEEDS), one thread per run (THREADS=1: two runs share the 2 cores, e.g. ONLY=ndgpt2
#           and ONLY=gpt2-mlp1536 in two processes; ONLY=gpt2 adds the optional gpt2 runs), the final
#           eval as above, then Wanda and both magnitude baselines at 70% and pruning/outliers.py on the
#           final checkpoint; every stage resumes.
# remade  = the study's seed-1 runs of all three models trained again (SEEDS, default 1), for the final
#           checkpoints git does not keep: the 70% sweeps and outliers as above -> logs/mini-remade/ (no eval;
#           the README compares their logs with the committed ones).
# Env: SEEDS="1 2 3", ONLY="gpt2 ndgpt2 gpt2-mlp1536" to run a subset, SWEEP_SEEDS="1 2" the seeds that are
# swept; DRY=1 prints the commands.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${NDGPT2_SHARED_DATA:-../shared/data}
DATA=data/prose
OUT=logs/mini
read -r -a MODELS <<< "${ONLY:-gpt2 ndgpt2 gpt2-mlp1536}"
read -r -a LONG_SEEDS <<< "${SEEDS:-1 2}"  # horizon and width
SEEDS_GIVEN=${SEEDS:-}  # remade: default 1
read -r -a SEEDS <<< "${SEEDS:-1 2 3}"
SWEEP_SEEDS=" ${SWEEP_SEEDS:-1 2} "
# 4 layers x 192 wide, T 256; 160 steps of 8,192 tokens = 1.31M tokens per run (18% of one epoch);
# val loss every 10 steps on a fixed 32,768-token val subset; fp32 everywhere (see README).
SIZE=(--n-layer 4 --n-head 4 --n-embd 192 --block-size 256 --seq-len 256)
TRAIN=(--preset smoke --data "$DATA" --order windows --micro-batch 8 --total-batch 8192 --max-steps 160
       --warmup-steps 16 --lr 1e-3 --min-lr 1e-4 --eval-every 10 --val-tokens 32768 --no-hellaswag
       --keep-checkpoints 2 --full-checkpoints 1 --no-amp)
FINAL_VAL=(--val-batches 256 --micro-batch 8 --seq-len 256)  # 524,288 held-out tokens
SWEEP_VAL=(--val-batches 32 --micro-batch 8 --calib-samples 128 --calib-len 256)  # 65,536 val tokens
stage=${1:-all}

run() { echo "+ $*"; [[ -n ${DRY:-} ]] || "$@"; }
mkdirs() { [[ -n ${DRY:-} ]] || mkdir -p "$@"; }  # DRY=1 leaves the tree as it is

data() {
  run python data/fineweb.py --input "$SHARED"/text_corpus/*.txt --strip-gutenberg --val-docs 4 --seed 0 \
    --out-dir "$DATA" --prefix prose --shard-size 10000000 --workers 2
}

train() {  # model seed
  local dir=$OUT/runs/$1-s$2 resume=()
  [[ -f $(final_ckpt "$1" "$2") ]] && return 0
  if compgen -G "$dir/model_*.pt" > /dev/null; then resume=(--resume); elif [[ -e $dir ]]; then resume=(--overwrite); fi
  run python experiment/train_gpt.py --model "$1" --seed "$2" --out-dir "$dir" "${SIZE[@]}" "${TRAIN[@]}" "${resume[@]}"
}

final_ckpt() { echo "$OUT/runs/$1-s$2/model_00160.pt"; }

swept() { [[ $SWEEP_SEEDS == *" $2 "* ]]; }  # model seed: is this run swept?

complete() {  # model seed: trained, evaluated and (if swept) swept; then its checkpoint is no longer needed
  [[ -f $OUT/runs/$1-s$2/summary.json && -f $OUT/eval/$1-s$2.json ]] && { ! swept "$1" "$2" || [[ -f $OUT/sweep/$1-s$2/sweep.md ]]; }
}

evaluate() {  # model seed: final val loss on >= 500k held-out tokens, HellaSwag (seed convention) at 1,000
  local report=$OUT/eval/$1-s$2.json
  run python experiment/test_gpt.py --ckpt "$(final_ckpt "$1" "$2")" --data "$DATA" "${FINAL_VAL[@]}" --no-amp \
    --hellaswag-limit 1000 --hellaswag-convention seed --seed 0 --json "$report"
}

sweep() {  # model seed: Wanda and both magnitude baselines at 10..70% and 2:4, 4:8 (finished reports are reused)
  [[ -f $OUT/sweep/$1-s$2/sweep.md ]] && return 0
  run python pruning/sweep.py --ckpt "$(final_ckpt "$1" "$2")" --data "$DATA" "${SWEEP_VAL[@]}" --no-amp --seed 0 \
    --out-dir "$OUT/sweep/$1-s$2"
}

figures() {
  local logs=() labels=()
  for m in gpt2 ndgpt2 gpt2-mlp1536; do
    for s in 1 2 3; do
      [[ -f $OUT/runs/$m-s$s/summary.json ]] && { logs+=("$OUT/runs/$m-s$s/log.txt"); labels+=("$m"); }  # finished runs only
    done
  done
  [[ ${#logs[@]} -gt 0 ]] || { echo "no runs in $OUT/runs yet"; return 0; }
  local extra=()
  local sweeps=()
  for d in "$OUT"/sweep/*/; do [[ -f $d/sweep.md ]] && sweeps+=("${d%/}"); done  # finished sweeps only
  [[ ${#sweeps[@]} -gt 0 ]] && extra+=(--pruning "${sweeps[@]}")
  compgen -G "$OUT/eval/*.json" > /dev/null && extra+=(--evals "$OUT"/eval/*.json)
  run python experiment/compare.py "${logs[@]}" --labels "${labels[@]}" "${extra[@]}" --out-dir "$OUT/plots" --force
  run bash scripts/make_figures.sh
  run python scripts/study_readme.py --study "$OUT"  # the README's study tables
}

long_run() {  # study model seed: issue 23's horizon (4 x 192, 879 steps) or width (6 x 384, 160 steps) runs
  local size=(--n-layer 4 --n-head 4 --n-embd 192) steps=879 every=20
  [[ $1 == width ]] && size=(--n-layer 6 --n-head 6 --n-embd 384) steps=160 every=10
  [[ $1 == mini-remade ]] && steps=160 every=10
  local dir=logs/$1/runs/$2-s$3 resume=()
  local final=$dir/model_$(printf %05d $steps).pt report=logs/$1/eval/$2-s$3.json
  if [[ ! -f $dir/summary.json ]]; then
    if compgen -G "$dir/model_*.pt" > /dev/null; then resume=(--resume); elif [[ -e $dir ]]; then resume=(--overwrite); fi
    run python experiment/train_gpt.py --model "$2" --seed "$3" --out-dir "$dir" "${size[@]}" --block-size 256 \
      --seq-len 256 "${TRAIN[@]}" --max-steps $steps --eval-every $every --threads "${THREADS:-1}" "${resume[@]}"
  fi
  [[ $1 == mini-remade ]] || mkdirs "logs/$1/eval"
  [[ $1 == mini-remade || -f $report ]] || OMP_NUM_THREADS=${THREADS:-1} run python experiment/test_gpt.py --ckpt "$final" \
    --data "$DATA" "${FINAL_VAL[@]}" --no-amp --hellaswag-limit 1000 --hellaswag-convention seed --seed 0 --json "$report"
  mechanism "$1" "$2" "$3" "$final"
}

mechanism() {  # study model seed checkpoint: Wanda against both magnitude baselines at 70%, and the input
  # outlier features of the pruned layers on the same calibration windows (issue 23's "Wanda's mechanism")
  local sweep=logs/$1/sweep/$2-s$3 outliers=logs/$1/outliers/$2-s$3.json
  [[ -f $sweep/sweep.md ]] || OMP_NUM_THREADS=${THREADS:-1} run python pruning/sweep.py --ckpt "$4" --data "$DATA" \
    "${SWEEP_VAL[@]}" --no-amp --seed 0 --sparsities 0.7 --nm --out-dir "$sweep"
  mkdirs "logs/$1/outliers"
  [[ -f $outliers ]] || OMP_NUM_THREADS=${THREADS:-1} run python pruning/outliers.py --ckpt "$4" --data "$DATA" \
    --calib-samples 128 --calib-len 256 --seed 0 --json "$outliers"
}

case $stage in
  horizon | width)
    read -r -a PAIR <<< "${ONLY:-ndgpt2 gpt2-mlp1536}"  # ONLY=ndgpt2 and ONLY=gpt2-mlp1536: two processes at once
    for s in "${LONG_SEEDS[@]}"; do for m in "${PAIR[@]}"; do long_run "$stage" "$m" "$s"; done; done ;;
  remade)
    for s in ${SEEDS_GIVEN:-1}; do for m in "${MODELS[@]}"; do long_run mini-remade "$m" "$s"; done; done ;;
  data) data ;;
  runs | all)
    [[ $stage == all ]] && data
    mkdirs "$OUT/eval"
    for s in "${SEEDS[@]}"; do
      for m in "${MODELS[@]}"; do
        complete "$m" "$s" && continue
        train "$m" "$s"
        [[ -f $OUT/eval/$m-s$s.json ]] || evaluate "$m" "$s"
        if swept "$m" "$s"; then sweep "$m" "$s"; fi
      done
    done
    [[ $stage == all ]] && figures ;;
  figures) figures ;;
  -h | --help) sed -n '2,23p' "$0" | cut -c3- ;;
  *) echo "usage: $0 [all|data|runs|figures|horizon|width|remade]" >&2; exit 2 ;;
esac
