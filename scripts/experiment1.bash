#!/usr/bin/env bash
# Experiment 1: post-training quantization sensitivity of a fine-tuned checkpoint, layer by layer: each layer's
# q/k/v/out/fc1/fc2 weights and inputs, attention input, softmax probabilities and residual sums, the token
# embeddings and the head quantized alone, the metric drop of each against FP32 (table, CSV and heatmap).
#
# Usage: bash scripts/experiment1.bash CHECKPOINT DATA [--bits 8|W,I] [--calib-batches N] [--max-sentences N]
#                                      [--out DIR]
#   CHECKPOINT       a sentence-prediction checkpoint from fairseq-train (roberta* or quant_roberta*)
#   DATA             its binarized data (input0/, label/), e.g. a GLUE task from `fairseq-quant-glue`
#   --bits           bit width of weights and inputs, one number (8) or weights,inputs (4,8); default 8
#   --calib-batches  training batches that calibrate each group's input ranges (default 8)
#   --max-sentences  evaluate on the first N sentences of valid only (faster; default all)
#   --out DIR        results go to DIR/<timestamp>-sensitivity (default runs/experiment1)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHECKPOINT=
DATA=
BITS=8
CALIB=8
MAX_SENTENCES=
OUT=runs/experiment1
usage() { sed -n '6,13p' "$ROOT/scripts/experiment1.bash" >&2; }
fail() { echo "experiment1.bash: error: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --bits|--calib-batches|--max-sentences|--out) [[ $# -ge 2 ]] || fail "$1 needs a value" ;;&
    --bits) BITS=$2; shift 2 ;;
    --calib-batches) CALIB=$2; shift 2 ;;
    --max-sentences) MAX_SENTENCES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "experiment1.bash: error: unknown option $1" >&2; usage; exit 2 ;;
    *) if [[ -z $CHECKPOINT ]]; then CHECKPOINT=$1
       elif [[ -z $DATA ]]; then DATA=$1
       else fail "expected CHECKPOINT DATA, got a third argument '$1'"; fi
       shift ;;
  esac
done
[[ -n $CHECKPOINT && -n $DATA ]] || { echo "experiment1.bash: error: CHECKPOINT and DATA are required" >&2; usage
                                      exit 2; }
[[ -f $CHECKPOINT ]] || fail "CHECKPOINT: no such file: $CHECKPOINT"
[[ -f $DATA/input0/dict.txt ]] || fail "DATA: $DATA is not binarized sentence-prediction data (no input0/dict.txt)"
if [[ $BITS =~ ^([0-9]+)$ ]]; then
  BITSW=$BITS BITSIN=$BITS
elif [[ $BITS =~ ^([0-9]+),([0-9]+)$ ]]; then
  BITSW=${BASH_REMATCH[1]} BITSIN=${BASH_REMATCH[2]}
else
  fail "--bits expects N or W,I (e.g. 8 or 4,8), got '$BITS'"
fi
for b in "$BITSW" "$BITSIN"; do
  ((10#$b >= 2 && 10#$b <= 16)) || fail "--bits: bit widths go from 2 to 16, got '$BITS'"
done
[[ $CALIB =~ ^[0-9]+$ ]] || fail "--calib-batches must be a non-negative integer, got '$CALIB'"
[[ -z $MAX_SENTENCES || $MAX_SENTENCES =~ ^[1-9][0-9]*$ ]] \
  || fail "--max-sentences must be a positive integer, got '$MAX_SENTENCES'"

bash "$ROOT/scripts/setup.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
RUN=$OUT/$(date +%Y%m%d-%H%M%S)-sensitivity
mkdir -p "$RUN"
echo "== W${BITSW}A${BITSIN} sensitivity of $CHECKPOINT on $DATA (log: $RUN/sensitivity.log)"
fairseq-quant-sensitivity --checkpoint "$CHECKPOINT" --data "$DATA" --bitsw "$BITSW" --bitsin "$BITSIN" \
  --calib-batches "$CALIB" ${MAX_SENTENCES:+--max-sentences "$MAX_SENTENCES"} --out "$RUN" \
  >"$RUN/sensitivity.log" 2>&1 || { status=$?; tail -n 20 "$RUN/sensitivity.log" >&2; exit $status; }
echo
cat "$RUN/sensitivity.md"
echo
echo "Results: $RUN/sensitivity.csv, $RUN/sensitivity.md, $RUN/sensitivity.png"
