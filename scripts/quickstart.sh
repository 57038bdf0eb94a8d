#!/usr/bin/env bash
# Quickstart: set-up, the embedded default task, then quant_roberta_tiny fine-tuned in FP32 and with W8A8
# quantization-aware training, and post-training quantization of the FP32 model at 8, 6 and 4 bits.
# Prints a markdown table of the dev metrics. About 5 minutes on 2 CPU cores.
#
# Usage: bash scripts/quickstart.sh [--out DIR] [--max-update N]
#   --out DIR         where data and runs go (default runs/quickstart); each run gets its own timestamped
#                     folder inside, so nothing from an earlier run is overwritten
#   --max-update N    fine-tuning updates per run (default 600)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=runs/quickstart
MAX_UPDATE=600
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --max-update) MAX_UPDATE=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "quickstart.sh: error: unknown argument $1 (expected --out DIR, --max-update N)" >&2; exit 2 ;;
  esac
done
if ! [[ $MAX_UPDATE =~ ^[1-9][0-9]*$ ]]; then
  echo "quickstart.sh: error: --max-update must be a positive integer, got '$MAX_UPDATE'" >&2
  exit 2
fi

bash "$ROOT/scripts/setup.sh"
bash "$ROOT/scripts/prepare_default_task.sh" "$OUT/data"
DATA=$OUT/data/bin
RUN=$OUT/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN"
RESULTS=$RUN/results.csv
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

finetune() {  # finetune NAME [extra fairseq-train flags...]
  local name=$1
  shift
  echo "== fine-tuning $name (log: $RUN/$name.log)"
  fairseq-train "$DATA" --user-dir "$ROOT/fairseq_quant" --task sentence_prediction --num-classes 2 \
    --arch quant_roberta_tiny --max-positions 64 --init-token 0 --separator-token 2 \
    --criterion sentence_prediction --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-3 \
    --lr-scheduler polynomial_decay --warmup-updates 60 --total-num-update "$MAX_UPDATE" --max-update "$MAX_UPDATE" \
    --batch-size 32 --dropout 0.1 --attention-dropout 0.1 --weight-decay 0.01 --cpu --seed 1 --num-workers 0 \
    --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric --no-epoch-checkpoints \
    --validate-interval-updates 200 --log-format simple --log-interval 100 --save-dir "$RUN/$name" "$@" \
    2>&1 | tee "$RUN/$name.log" | grep --line-buffered -E "\| (train_inner|valid|train) \||done training"
}

evaluate() {  # evaluate CHECKPOINT TAG [evaluate.py flags...]
  local ckpt=$1 tag=$2
  shift 2
  python3 "$ROOT/scripts/evaluate.py" --checkpoint "$ckpt" --data "$DATA" --split valid --cpu \
    --csv "$RESULTS" --tag "$tag" "$@" 2>>"$RUN/evaluate.log"
}

finetune fp32
finetune w8a8-qat --quantw --bitsw 8 --quantin --bitsin 8

echo "== evaluating"
evaluate "$RUN/fp32/checkpoint_best.pt" "FP32 fine-tuning"
evaluate "$RUN/w8a8-qat/checkpoint_best.pt" "W8A8 QAT fine-tuning"
for bits in 8 6 4; do
  evaluate "$RUN/fp32/checkpoint_best.pt" "PTQ of FP32, $bits-bit, 16 calibration batches" \
    --quantw --bitsw "$bits" --quantin --bitsin "$bits" --calib-batches 16
done

echo
echo "Dev set of the embedded default task, quant_roberta_tiny, $MAX_UPDATE updates (results: $RESULTS)"
python3 "$ROOT/scripts/results_table.py" "$RESULTS"
