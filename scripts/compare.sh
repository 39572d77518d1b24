#!/usr/bin/env bash
# ISFA vs FedAvg vs FedProx (mu 0.01) on the synthetic benchmark with unreliable clients, several seeds,
# then `pftray compare` (mean ± 95% CI over (seed, client), paired Wilcoxon / t-tests).
#
#   scripts/compare.sh [OUT_DIR]            env: SEEDS="0 1 2"  CONFIG=configs/compare_synthetic.yaml
#                                                LOCAL=1 (in-process, no Ray)  EVAL=1 (pftray eval each run)
# Finished runs are skipped, so the script can be re-run after an interruption.
set -euo pipefail
OUT=${1:-runs/compare-synthetic}
CONFIG=${CONFIG:-configs/compare_synthetic.yaml}
SEEDS=${SEEDS:-"0 1 2"}
LOCAL=${LOCAL:-0}
EVAL=${EVAL:-1}
PFTRAY=${PFTRAY:-pftray}

backbone=$($PFTRAY config "$CONFIG" | python -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["model"]["backbone"])')
if [[ -n "$backbone" && ! -f "$backbone" ]]; then
  echo "compare.sh: the backbone $backbone does not exist yet. Make it first with:" >&2
  echo "  $PFTRAY pretrain $CONFIG --out $backbone" >&2
  exit 2
fi

run_flags=()
[[ "$LOCAL" == 1 ]] && run_flags+=(--local)
mkdir -p "$OUT"
for seed in $SEEDS; do
  for method in isfa fedavg fedprox; do
    dir="$OUT/$method-s$seed"
    sets=(--set "experiment.seed=$seed" --set "fed.strategy=$method")
    [[ "$method" == fedprox ]] && sets+=(--set fed.mu=0.01)
    if [[ -f "$dir/meta.json" ]] && grep -q '"status": "done"' "$dir/meta.json"; then
      echo "== $dir: done, skipped"
    elif [[ -f "$dir/config.yaml" ]]; then
      echo "== $dir: resuming"
      $PFTRAY run --resume "$dir" "${run_flags[@]}"
    else
      echo "== $dir: $method seed $seed"
      $PFTRAY run "$CONFIG" "${sets[@]}" --out "$dir" "${run_flags[@]}"
    fi
    if [[ "$EVAL" == 1 ]]; then
      $PFTRAY eval "$dir" --no-samples
    fi
  done
done
$PFTRAY compare "$OUT" --out "$OUT/compare"
