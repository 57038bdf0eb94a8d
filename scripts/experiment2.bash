#!/usr/bin/env bash
# Experiment 2: static 8-bit vs cyclic precision (CPT) fine-tuning of the same model on the same task and seeds,
# ending with the CPT report (final metric, training bit operations relative to static 8-bit, bit-schedule plot).
#
# Usage: bash scripts/experiment2.bash [DATA] [--pretrained minilm|HF_DIR] [--cpt-configs A.json,B.json]
#                                      [--seeds 1,2] [--max-update N] [--lr LR] [--out DIR]
#   DATA omitted    the embedded default task, quant_roberta_tiny from random initialisation (3000 updates, lr 1e-3)
#   DATA            a GLUE task binarised by `fairseq-quant-glue` (or scripts/glue_table.bash) with the
#                   vocabulary of --pretrained (default minilm); fine-tunes the converted model (300 updates, lr 1e-4)
#   --cpt-configs   cfg_cpt.json files, one CPT run each per seed (default configs/cfg_cpt.json)
#   --seeds         comma-separated seeds, every run once per seed (default 1,2)
#   --out DIR       runs go to DIR/<timestamp>-experiment2 (default runs/experiment2)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/lib.sh"  # experiment_task, finetune
DATA=
PRETRAINED=
CONFIGS=$ROOT/configs/cfg_cpt.json
SEEDS=1,2
MAX_UPDATE=
LR=
OUT=runs/experiment2
usage() { sed -n '5,13p' "$ROOT/scripts/experiment2.bash" >&2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --cpt-configs) CONFIGS=$2; shift 2 ;;
    --seeds) SEEDS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) common_option experiment2.bash "$@"
       [[ $CONSUMED -gt 0 ]] || { echo "experiment2.bash: error: unknown option $1" >&2; usage; exit 2; }
       shift "$CONSUMED" ;;
  esac
done
if [[ -n $MAX_UPDATE && ! $MAX_UPDATE =~ ^[1-9][0-9]*$ ]]; then
  echo "experiment2.bash: error: --max-update must be a positive integer, got '$MAX_UPDATE'" >&2
  exit 2
fi
IFS=, read -r -a CONFIG_LIST <<<"$CONFIGS"
python3 - "${CONFIG_LIST[@]}" <<'PY'  # every config valid before anything runs
import sys
from fairseq_quant.core.schedule import CPTConfigError, load_cpt_config
for path in sys.argv[1:]:
    try:
        load_cpt_config(path)
    except CPTConfigError as e:
        print(f"experiment2.bash: error: --cpt-configs: {e}", file=sys.stderr)
        sys.exit(2)
PY
IFS=, read -r -a SEED_LIST <<<"$SEEDS"

bash "$ROOT/scripts/setup.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
experiment_task "$OUT" "$DATA" "$PRETRAINED" experiment2.bash  # DATA, NAME, MODEL_FLAGS, TASK_FLAGS, ...
RUN=$OUT/$(date +%Y%m%d-%H%M%S)-$NAME
mkdir -p "$RUN"
LOGS=()
for seed in "${SEED_LIST[@]}"; do
  finetune static8 "$seed" --quantw --quantin --bitsw 8 --bitsin 8
  for cfg in "${CONFIG_LIST[@]}"; do
    finetune "cpt-$(basename "$cfg" .json)" "$seed" --quantw --quantin --cpt-config "$cfg"
  done
done

echo
echo "Static 8-bit vs CPT, $NAME, $MAX_UPDATE updates, seeds $SEEDS (dev metric in %; logs and plot: $RUN)"
python3 "$ROOT/scripts/cpt_report.py" "${LOGS[@]}" --out "$RUN/report"
