#!/usr/bin/env bash
# The PTQ/QAT table (Bondarenko et al., EMNLP 2021, on this plugin): one model fine-tuned in FP32 on one task, then
# W8A8 per-tensor PTQ, W8A8 with MSE ranges, with per-embedding-group ranges (PEG), mixed W8A{8,16}, W4A32 with
# AdaRound (and round-to-nearest), and W4A8 QAT with learned ranges fine-tuned from the FP32 model. Every activation
# row also quantizes the residual sums before the LayerNorms (y), where the outliers live.
#
# Usage: bash scripts/ptq_table.bash [DATA] [--pretrained minilm|HF_DIR] [--max-update N] [--lr LR] [--seed N]
#                                    [--calib-batches N] [--adaround-iters N] [--out DIR]
#   DATA omitted      the embedded default task, quant_roberta_tiny from random initialisation (3000 updates)
#   DATA              a GLUE task binarised by `fairseq-quant-glue` with the vocabulary of --pretrained
#                     (default minilm); fine-tunes the converted model (300 updates, lr 1e-4)
#   --calib-batches   training batches that calibrate the PTQ ranges (default 16)
#   --adaround-iters  AdaRound steps per layer (default 500)
#   --out DIR         runs go to DIR/<timestamp>-<task> (default runs/ptq)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/lib.sh"  # common_option, start_run, finetune, ev
DATA=
PRETRAINED=
MAX_UPDATE=
LR=
SEED=1
CALIB=16
ITERS=500
OUT=runs/ptq
usage() { sed -n '7,14p' "$ROOT/scripts/ptq_table.bash" >&2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --seed) SEED=$2; shift 2 ;;
    --calib-batches) CALIB=$2; shift 2 ;;
    --adaround-iters) ITERS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) common_option ptq_table.bash "$@"
       [[ $CONSUMED -gt 0 ]] || { echo "ptq_table.bash: error: unknown option $1" >&2; usage; exit 2; }
       shift "$CONSUMED" ;;
  esac
done
for opt in max-update:$MAX_UPDATE seed:$SEED calib-batches:$CALIB adaround-iters:$ITERS; do
  if [[ ! ${opt#*:} =~ ^[0-9]*$ ]]; then
    echo "ptq_table.bash: error: --${opt%%:*} must be a non-negative integer, got '${opt#*:}'" >&2
    exit 2
  fi
done

bash "$ROOT/scripts/setup.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start_run "$OUT" "$DATA" "$PRETRAINED" ptq_table.bash  # DATA, NAME, RUN, RESULTS, MODEL_FLAGS, TASK_FLAGS, ...

finetune fp32 "$SEED"
FP32=$RUN/fp32-seed$SEED/checkpoint_best.pt
# QAT starts from the fine-tuned FP32 model (its ranges estimated at the first step, then learned), for as many
# updates again
finetune w4a8-qat "$SEED" --quantw --bitsw 4 --quantin --bitsin 8 --learn-ranges --quantize-ops gemm,residual \
  --restore-file "$FP32" --reset-optimizer --reset-dataloader --reset-meters --reset-lr-scheduler
A8=(--quantw --quantin --quantw-granularity tensor --quantize-ops gemm,residual --calib-batches "$CALIB")
ev --checkpoint "$FP32" --tag "FP32"
ev --checkpoint "$FP32" --tag "W8A8 PTQ, per-tensor min-max" "${A8[@]}"
ev --checkpoint "$FP32" --tag "W8A8 PTQ, MSE ranges" "${A8[@]}" --estimatorw mse_grid --estimatorin mse_grid
ev --checkpoint "$FP32" --tag "W8A8 PTQ, PEG (residual sums: 6 permuted groups)" "${A8[@]}" \
  --quant-dict "{'residual': 'ngp6'}"
ev --checkpoint "$FP32" --tag "W8A{8,16} PTQ (x, h, y and residual sums at 16 bits)" "${A8[@]}" \
  --quant-dict "{'x': 16, 'h': 16, 'residual': 16}"
ev --checkpoint "$FP32" --tag "W4A32 PTQ, round to nearest" --quantw --bitsw 4
ev --checkpoint "$FP32" --tag "W4A32 PTQ, AdaRound" --quantw --bitsw 4 --adaround --adaround-iters "$ITERS"
ev --checkpoint "$RUN/w4a8-qat-seed$SEED/checkpoint_best.pt" --tag "W4A8 QAT, learned ranges"

echo
echo "PTQ and QAT, $NAME, $MAX_UPDATE updates, seed $SEED (dev metric in %; runs: $RUN)"
python3 "$ROOT/scripts/results_table.py" "$RESULTS" | tee "$RUN/table.md"
