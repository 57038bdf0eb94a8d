#!/usr/bin/env bash
# The real-data table: a converted pretrained encoder (default: the pip-shipped all-MiniLM-L6-v2) fine-tuned on
# GLUE tasks in FP32 and with W8A8 QAT, and post-training quantized at 8/6/4 bits; each task's official dev metric.
#
# Usage: bash scripts/glue_table.bash GLUE_DIR [--tasks SST-2,CoLA,MRPC,RTE,STS-B] [--pretrained minilm|HF_DIR]
#                                      [--max-train N] [--max-update N] [--lr LR] [--out DIR]
#   GLUE_DIR        GLUE TSVs in the standard layout (scripts/download_glue.py writes it)
#   --max-train N   fine-tune on a seeded random sample of N training sentences (default: all)
#   --max-update N  updates per fine-tuning run (default 500); batch 32
# Writes OUT/RUN/results.csv and prints a markdown table. Each run gets its own timestamped folder.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $# -lt 1 || $1 == -* ]]; then
  sed -n '5,9p' "$0" >&2
  exit 2
fi
GLUE_DIR=$1
shift
TASKS=SST-2,CoLA,MRPC,RTE,STS-B
PRETRAINED=minilm
MAX_TRAIN=
MAX_UPDATE=500
LR=5e-5
OUT=runs/glue
while [[ $# -gt 0 ]]; do
  case $1 in
    --tasks) TASKS=$2; shift 2 ;;
    --pretrained) PRETRAINED=$2; shift 2 ;;
    --max-train) MAX_TRAIN=$2; shift 2 ;;
    --max-update) MAX_UPDATE=$2; shift 2 ;;
    --lr) LR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "glue_table.bash: error: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[[ -d $GLUE_DIR ]] || { echo "glue_table.bash: error: GLUE_DIR '$GLUE_DIR' is not a directory" >&2; exit 2; }

bash "$ROOT/scripts/setup.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [[ $PRETRAINED == minilm ]]; then
  HF_DIR=$(python3 -c "from fairseq_quant.data.minilm import minilm_dir; print(minilm_dir())")
  NAME=minilm
else
  HF_DIR=$PRETRAINED
  NAME=$(basename "$PRETRAINED")
fi
CONVERTED=$OUT/pretrained/$NAME
[[ -f $CONVERTED/model.pt ]] || fairseq-quant-convert-hf "$HF_DIR" "$CONVERTED"
if [[ -f $CONVERTED/vocab.txt ]]; then
  TOKENIZER=(--wordpiece "$CONVERTED/vocab.txt")
else
  TOKENIZER=(--bpe gpt2 --encoder-json "$CONVERTED/vocab.json" --vocab-bpe "$CONVERTED/merges.txt")
fi
read -r -a ARCH_FLAGS <"$CONVERTED/fairseq_args.txt"
RUN=$OUT/$(date +%Y%m%d-%H%M%S)-$NAME
mkdir -p "$RUN"
RESULTS=$RUN/results.csv

IFS=, read -r -a TASK_LIST <<<"$TASKS"
for task in "${TASK_LIST[@]}"; do
  data=$OUT/data/$task-$NAME${MAX_TRAIN:+-$MAX_TRAIN}
  fairseq-quant-glue "$GLUE_DIR" "$task" "$data" "${TOKENIZER[@]}" --srcdict "$CONVERTED/dict.txt" \
    --workers 2 ${MAX_TRAIN:+--max-train "$MAX_TRAIN"} 2>>"$RUN/prepare.log"
  read -r -a TASK_FLAGS < <(python3 -c "from fairseq_quant.data.glue import fairseq_train_flags as f; print(*f('$task'))")
  for variant in fp32 w8a8-qat; do
    quant=()
    [[ $variant == w8a8-qat ]] && quant=(--quantw --bitsw 8 --quantin --bitsin 8)
    echo "== $task: fine-tuning $variant (log: $RUN/$task-$variant.log)"
    fairseq-train "$data" --user-dir "$ROOT/fairseq_quant" --task sentence_prediction "${TASK_FLAGS[@]}" \
      "${ARCH_FLAGS[@]}" --restore-file "$CONVERTED/model.pt" --reset-optimizer --reset-dataloader --reset-meters \
      --reset-lr-scheduler --init-token 0 --separator-token 2 --criterion sentence_prediction --optimizer adam \
      --adam-betas '(0.9, 0.98)' --lr "$LR" --lr-scheduler polynomial_decay --warmup-updates $((MAX_UPDATE / 10)) \
      --total-num-update "$MAX_UPDATE" --max-update "$MAX_UPDATE" --batch-size 32 \
      --shorten-method truncate --weight-decay 0.1 --cpu --seed 1 --num-workers 0 --no-epoch-checkpoints \
      --no-last-checkpoints --validate-interval-updates $((MAX_UPDATE / 2)) --log-format simple \
      --log-interval 50 --save-dir "$RUN/$task-$variant" "${quant[@]}" >"$RUN/$task-$variant.log" 2>&1
  done
  ev() { python3 "$ROOT/scripts/evaluate.py" --data "$data" --split valid --cpu --csv "$RESULTS" "$@" \
           2>>"$RUN/evaluate.log"; }
  ev --checkpoint "$RUN/$task-fp32/checkpoint_best.pt" --tag "$task FP32"
  ev --checkpoint "$RUN/$task-w8a8-qat/checkpoint_best.pt" --tag "$task W8A8 QAT"
  for bits in 8 6 4; do
    ev --checkpoint "$RUN/$task-fp32/checkpoint_best.pt" --tag "$task PTQ $bits-bit" --quantw --bitsw "$bits" \
      --quantin --bitsin "$bits" --calib-batches 16
  done
done
echo
echo "GLUE dev, $NAME, $MAX_UPDATE updates${MAX_TRAIN:+ on $MAX_TRAIN training sentences} (results: $RESULTS)"
python3 "$ROOT/scripts/results_table.py" "$RESULTS"
