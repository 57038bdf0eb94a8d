#!/usr/bin/env bash
# Experiment 2: static 8-bit vs cyclic precision (CPT) fine-tuning of the same model on the same task and seeds,
# ending with the CPT report (final metric, training bit operations relative to static 8-bit, bit-schedule plot).
#
# Usage: bash scripts/experiment2.bash [DATA] [--pretrained minilm|HF_DIR] [--cpt-configs A.json,B.json]
#                                      [--seeds 1,2] [--max-update N] [--lr LR] [--out DIR]
#   DATA omitted    the embedded default task, quant_roberta_tiny from random initialisation (3000 updates, lr 1e-3)
#   DATA            a GLUE task binarised by `python -m fairseq_quant.glue` (or scripts/glue_table.bash) with the
#                   vocabulary of --pretrained (default minilm); fine-tunes the converted model (300 updates, lr 1e-4)
#   --cpt-configs   cfg_cpt.json files, one CPT run each per seed (default configs/cfg_cpt.json)
#   --seeds         comma-separated seeds, every run once per seed (default 1,2)
#   --out DIR       runs go to DIR/<timestamp>-experiment2 (default runs/experiment2)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/lib.sh"  # use_pretrained
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
    --pretrained) PRETRAINED=$2; shift 2 ;;
    --cpt-configs) CONFIGS=$2; shift 2 ;;
    --seeds) SEEDS=$2; shift 2 ;;
    --max-update) MAX_UPDATE=$2; shift 2 ;;
    --lr) LR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "experiment2.bash: error: unknown option $1" >&2; usage; exit 2 ;;
    *) [[ -z $DATA ]] || { echo "experiment2.bash: error: one DATA directory, got '$DATA' and '$1'" >&2; exit 2; }
       DATA=$1; shift ;;
  esac
done
if [[ -n $MAX_UPDATE && ! $MAX_UPDATE =~ ^[1-9][0-9]*$ ]]; then
  echo "experiment2.bash: error: --max-update must be a positive integer, got '$MAX_UPDATE'" >&2
  exit 2
fi
IFS=, read -r -a CONFIG_LIST <<<"$CONFIGS"
python3 - "${CONFIG_LIST[@]}" <<'PY'  # every config valid before anything runs
import sys
from fairseq_quant.schedule import CPTConfigError, load_cpt_config
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
if [[ -z $DATA ]]; then
  [[ -z $PRETRAINED ]] || { echo "experiment2.bash: error: --pretrained needs DATA prepared with its vocabulary" >&2
                            exit 2; }
  bash "$ROOT/scripts/prepare_default_task.sh" "$OUT/data"
  DATA=$OUT/data/bin
  NAME=default-task
  MODEL_FLAGS=(--arch quant_roberta_tiny --max-positions 64)
  TASK_FLAGS=(--num-classes 2 --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric)
  MAX_UPDATE=${MAX_UPDATE:-3000}
  LR=${LR:-1e-3}
else
  [[ -f $DATA/glue_task.json ]] || { echo "experiment2.bash: error: $DATA has no glue_task.json; prepare it with" \
    "python -m fairseq_quant.glue GLUE_DIR TASK OUT --wordpiece VOCAB --srcdict DICT" >&2; exit 2; }
  use_pretrained "$OUT" "${PRETRAINED:-minilm}"
  if ! cmp -s "$DATA/input0/dict.txt" "$CONVERTED/dict.txt"; then
    echo "experiment2.bash: error: $DATA/input0/dict.txt is not the vocabulary of $NAME ($CONVERTED/dict.txt):" \
      "prepare the task with --srcdict $CONVERTED/dict.txt" >&2
    exit 2
  fi
  task=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['task'])" "$DATA/glue_task.json")
  read -r -a TASK_FLAGS < <(python3 -c "from fairseq_quant.glue import fairseq_train_flags as f; print(*f('$task'))")
  MODEL_FLAGS=("${ARCH_FLAGS[@]}" --restore-file "$CONVERTED/model.pt" --reset-optimizer --reset-dataloader
    --reset-meters --reset-lr-scheduler --shorten-method truncate)
  NAME=$task-$NAME
  MAX_UPDATE=${MAX_UPDATE:-300}
  LR=${LR:-1e-4}
fi

RUN=$OUT/$(date +%Y%m%d-%H%M%S)-$NAME
mkdir -p "$RUN"
LOGS=()
finetune() {  # finetune RUN_NAME SEED [fairseq-train flags...]
  local name=$1 seed=$2
  shift 2
  echo "== $name, seed $seed (log: $RUN/$name-seed$seed.log)"
  fairseq-train "$DATA" --user-dir "$ROOT/fairseq_quant" --task sentence_prediction "${TASK_FLAGS[@]}" \
    "${MODEL_FLAGS[@]}" --init-token 0 --separator-token 2 --criterion sentence_prediction --optimizer adam \
    --adam-betas '(0.9, 0.98)' --lr "$LR" --lr-scheduler polynomial_decay --warmup-updates $((MAX_UPDATE / 10)) \
    --total-num-update "$MAX_UPDATE" --max-update "$MAX_UPDATE" --batch-size 32 --dropout 0.1 \
    --attention-dropout 0.1 --weight-decay 0.01 --cpu --seed "$seed" --num-workers 0 --no-epoch-checkpoints \
    --no-last-checkpoints --validate-interval-updates $((MAX_UPDATE > 3 ? MAX_UPDATE / 3 : 1)) \
    --log-format simple --log-interval $((MAX_UPDATE > 300 ? MAX_UPDATE / 300 : 1)) \
    --save-dir "$RUN/$name-seed$seed" --quantw --quantin "$@" >"$RUN/$name-seed$seed.log" 2>&1 \
    || { tail -n 20 "$RUN/$name-seed$seed.log" >&2; exit 1; }
  LOGS+=("$name=$RUN/$name-seed$seed.log")
}
for seed in "${SEED_LIST[@]}"; do
  finetune static8 "$seed" --bitsw 8 --bitsin 8
  for cfg in "${CONFIG_LIST[@]}"; do
    finetune "cpt-$(basename "$cfg" .json)" "$seed" --cpt-config "$cfg"
  done
done

echo
echo "Static 8-bit vs CPT, $NAME, $MAX_UPDATE updates, seeds $SEEDS (dev metric in %; logs and plot: $RUN)"
python3 "$ROOT/scripts/cpt_report.py" "${LOGS[@]}" --out "$RUN/report"
