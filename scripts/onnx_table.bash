#!/usr/bin/env bash
# The CPU deployment table: one model fine-tuned in FP32 and in W8A8 QAT on one task, evaluated in PyTorch (fake
# quantization) and exported to ONNX and run by ONNX Runtime: FP32, our static W8A8 Q/DQ exports (PTQ of the FP32
# model with calibrated ranges, and the QAT model), and ONNX Runtime's own quantize_dynamic of the FP32 export.
# Dev metric and milliseconds per batch of each.
#
# Usage: bash scripts/onnx_table.bash [DATA] [--pretrained minilm|HF_DIR] [--max-update N] [--lr LR] [--out DIR]
#   DATA omitted  the embedded default task, quant_roberta_tiny from random initialisation (3000 updates)
#   DATA          a GLUE task binarised by `fairseq-quant-glue` with the vocabulary of --pretrained
#                 (default minilm); fine-tunes the converted model (300 updates, lr 1e-4)
#   --out DIR     runs go to DIR/<timestamp>-<task> (default runs/onnx); the ONNX files stay in the run folder
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/lib.sh"  # common_option, start_run, finetune, ev
DATA=
PRETRAINED=
MAX_UPDATE=
LR=
OUT=runs/onnx
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) sed -n '7,11p' "$ROOT/scripts/onnx_table.bash"; exit 0 ;;
    *) common_option onnx_table.bash "$@"
       [[ $CONSUMED -gt 0 ]] || { echo "onnx_table.bash: error: unknown option $1" >&2; exit 2; }
       shift "$CONSUMED" ;;
  esac
done

bash "$ROOT/scripts/setup.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start_run "$OUT" "$DATA" "$PRETRAINED" onnx_table.bash  # DATA, NAME, RUN, RESULTS, MODEL_FLAGS, TASK_FLAGS, ...

finetune fp32 1
finetune w8a8-qat 1 --quantw --quantin
FP32=$RUN/fp32-seed1/checkpoint_best.pt
QAT=$RUN/w8a8-qat-seed1/checkpoint_best.pt
PTQ=(--quantw --quantin --calib-batches 16)
export_onnx() {  # export_onnx CHECKPOINT OUT.onnx [fairseq-quant-export flags...]
  fairseq-quant-export --checkpoint "$1" --data "$DATA" --out "$RUN/$2" "${@:3}" >>"$RUN/export.log" 2>&1 \
    || { tail -n 5 "$RUN/export.log" >&2; exit 1; }
}
export_onnx "$FP32" fp32.onnx --fp32
export_onnx "$FP32" ptq-w8a8.onnx "${PTQ[@]}"
export_onnx "$QAT" qat-w8a8.onnx
export_onnx "$FP32" ort-dynamic.onnx --ort-dynamic
ev --checkpoint "$FP32" --tag "FP32"
ev --checkpoint "$FP32" --tag "FP32" --backend onnxruntime --onnx "$RUN/fp32.onnx"
ev --checkpoint "$FP32" --tag "W8A8 PTQ, 16 calibration batches" "${PTQ[@]}"
ev --checkpoint "$FP32" --tag "W8A8 PTQ, 16 calibration batches" --backend onnxruntime --onnx "$RUN/ptq-w8a8.onnx"
ev --checkpoint "$QAT" --tag "W8A8 QAT"
ev --checkpoint "$QAT" --tag "W8A8 QAT" --backend onnxruntime --onnx "$RUN/qat-w8a8.onnx"
ev --checkpoint "$FP32" --tag "ONNX Runtime quantize_dynamic of the FP32 export" --backend onnxruntime \
  --onnx "$RUN/ort-dynamic.onnx"

echo
echo "CPU deployment, $NAME, $MAX_UPDATE updates (dev metric in %, batches of 32 sentences; runs: $RUN)"
python3 "$ROOT/scripts/results_table.py" "$RESULTS" --latency | tee "$RUN/table.md"
