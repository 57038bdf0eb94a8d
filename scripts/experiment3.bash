#!/usr/bin/env bash
# Experiment 3: sweeps of cyclic precision training — the number of cycles (num_cyclic_period) at a fixed bit
# range, and the bit range at a fixed number of cycles — against static 8-bit, ending with the CPT report.
#
# Usage: bash scripts/experiment3.bash [DATA] [--periods 2,8,32] [--ranges 3-8,4-8,6-8] [--period 8] [--range 4-8]
#                                      [--seeds 1] [--pretrained minilm|HF_DIR] [--max-update N] [--lr LR] [--out DIR]
#   --periods P,...   cycle counts swept at --range (default 2,8,32)
#   --ranges LO-HI,...  bit ranges (weights and inputs alike) swept at --period cycles (default 3-8,4-8,6-8)
#   DATA and the other options as for scripts/experiment2.bash, which runs the sweep (default --seeds 1; runs
#   go to DIR/<timestamp>-..., default runs/experiment3, the generated cfg_cpt files to DIR/configs)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PERIODS=2,8,32
RANGES=3-8,4-8,6-8
PERIOD=8
RANGE=4-8
OUT=runs/experiment3
PASS=(--seeds 1)
while [[ $# -gt 0 ]]; do
  case $1 in
    --periods) PERIODS=$2; shift 2 ;;
    --ranges) RANGES=$2; shift 2 ;;
    --period) PERIOD=$2; shift 2 ;;
    --range) RANGE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '5,11p' "$ROOT/scripts/experiment3.bash" >&2; exit 0 ;;
    --seeds|--pretrained|--max-update|--lr) PASS+=("$1" "$2"); shift 2 ;;
    -*) echo "experiment3.bash: error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) PASS+=("$1"); shift ;;
  esac
done
mkdir -p "$OUT/configs"
config() {  # config LO-HI PERIOD -> path of a cfg_cpt.json for them
  local lo=${1%-*} hi=${1#*-} period=$2
  if ! [[ $1 =~ ^[0-9]+-[0-9]+$ && $period =~ ^[0-9]+$ ]]; then
    echo "experiment3.bash: error: bit ranges are LO-HI (e.g. 4-8) and periods integers, got '$1' and '$2'" >&2
    exit 2
  fi
  local path=$OUT/configs/w$lo-$hi-a$lo-$hi-p$period.json
  printf '{"wbit_min": %d, "wbit_max": %d, "inbit_min": %d, "inbit_max": %d, "num_cyclic_period": %d}\n' \
    "$lo" "$hi" "$lo" "$hi" "$period" >"$path"
  echo "$path"
}
CONFIGS=()
IFS=, read -r -a list <<<"$PERIODS"
for p in "${list[@]}"; do CONFIGS+=("$(config "$RANGE" "$p")"); done
IFS=, read -r -a list <<<"$RANGES"
for r in "${list[@]}"; do
  c=$(config "$r" "$PERIOD")
  [[ " ${CONFIGS[*]} " == *" $c "* ]] || CONFIGS+=("$c")
done
bash "$ROOT/scripts/experiment2.bash" "${PASS[@]}" --cpt-configs "$(IFS=,; echo "${CONFIGS[*]}")" --out "$OUT"
