#!/usr/bin/env bash
# Number formats: fine-tune the same model on the same task in FP32 and in each format (every operation
# quantized: GEMMs, activation function, LayerNorm, attention scaling/softmax, residual sums), and post-training
# quantize the FP32 checkpoint to each format (GEMMs only, and every operation); writes a markdown table.
#
# Usage: bash scripts/formats_table.bash [DATA] [--pretrained minilm|HF_DIR] [--formats bf16,posit8,fp8,int8]
#                                        [--max-update N] [--lr LR] [--seed N] [--calib-batches N] [--out DIR]
#   DATA omitted    the embedded default task, quant_roberta_tiny from random initialisation (3000 updates, lr 1e-3)
#   DATA            a GLUE task binarised by `fairseq-quant-glue` with the vocabulary of --pretrained
#                   (default minilm); fine-tunes the converted model (300 updates, lr 1e-4)
#   --formats       bf16 (e8m7), posit8 (posit8_1), fp8 (E4M3 weights and activations with per-tensor amax
#                   scaling, E5M2 gradients in fine-tuning), int8 (W8A8 integer grids); default all four
#   --calib-batches training batches that calibrate the PTQ ranges (default 16)
#   --out DIR       runs go to DIR/<timestamp>-<task> (default runs/formats)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/lib.sh"  # common_option, start_run, finetune, ev
DATA=
PRETRAINED=
FORMATS=bf16,posit8,fp8,int8
MAX_UPDATE=
LR=
SEED=1
CALIB=16
OUT=runs/formats
usage() { sed -n '6,15p' "$ROOT/scripts/formats_table.bash" >&2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --formats) FORMATS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --calib-batches) CALIB=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) common_option formats_table.bash "$@"
       [[ $CONSUMED -gt 0 ]] || { echo "formats_table.bash: error: unknown option $1" >&2; usage; exit 2; }
       shift "$CONSUMED" ;;
  esac
done
for opt in max-update:$MAX_UPDATE seed:$SEED calib-batches:$CALIB; do
  if [[ ! ${opt#*:} =~ ^[0-9]*$ ]]; then
    echo "formats_table.bash: error: --${opt%%:*} must be a non-negative integer, got '${opt#*:}'" >&2
    exit 2
  fi
done
ALL_OPS=gemm,act,norm,attn_scaling,residual
# format_flags NAME: the quantization flags of a format (weights and inputs)
format_flags() {
  case $1 in
    bf16) echo --formatw e8m7 --formatin e8m7 ;;
    posit8) echo --formatw posit8_1 --formatin posit8_1 ;;
    fp8) echo --formatw fp8_e4m3 --formatw-scaling amax --formatin fp8_e4m3 --formatin-scaling amax ;;
    int8) echo --bitsw 8 --bitsin 8 ;;
    *) return 1 ;;
  esac
}
IFS=, read -r -a FORMAT_LIST <<<"$FORMATS"
for f in "${FORMAT_LIST[@]}"; do
  format_flags "$f" >/dev/null || { echo "formats_table.bash: error: --formats: unknown format '$f'; allowed:" \
    "bf16, posit8, fp8, int8" >&2; exit 2; }
done

bash "$ROOT/scripts/setup.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start_run "$OUT" "$DATA" "$PRETRAINED" formats_table.bash  # DATA, NAME, RUN, RESULTS, MODEL_FLAGS, TASK_FLAGS, ...

finetune fp32 "$SEED"
ev --checkpoint "$RUN/fp32-seed$SEED/checkpoint_best.pt" --tag "fp32|fine-tuned"
for f in "${FORMAT_LIST[@]}"; do
  read -r -a flags <<<"$(format_flags "$f")"
  grad=()
  [[ $f == fp8 ]] && grad=(--formatgrad fp8_e5m2)
  finetune "$f" "$SEED" --quantw --quantin "${flags[@]}" "${grad[@]}" --quantize-ops "$ALL_OPS"
  ev --checkpoint "$RUN/$f-seed$SEED/checkpoint_best.pt" --tag "$f|fine-tuned"
  for ops in gemm "$ALL_OPS"; do
    ev --checkpoint "$RUN/fp32-seed$SEED/checkpoint_best.pt" --tag "$f|PTQ $ops" --quantw --quantin "${flags[@]}" \
      --quantize-ops "$ops" --calib-batches "$CALIB"
  done
done

echo
echo "Number formats, $NAME, $MAX_UPDATE updates, seed $SEED (dev metric in %; runs: $RUN)"
python3 - "$RESULTS" "$ALL_OPS" <<'PY' | tee "$RUN/table.md"
import csv
import sys

rows = list(csv.DictReader(open(sys.argv[1], newline="")))
all_ops = sys.argv[2]
names = {"fp32": "FP32", "bf16": "BF16 (e8m7)", "posit8": "Posit8 (es=1)", "fp8": "FP8 (E4M3, E5M2 gradients)",
         "int8": "INT8 (W8A8)"}
columns = ["fine-tuned", "PTQ gemm", f"PTQ {all_ops}"]
metric = next((r["metric"] for r in rows if r.get("metric")), "accuracy")
table = {}
for r in rows:
    fmt, column = r["tag"].split("|")
    table.setdefault(fmt, {})[column] = f"{100 * float(r[metric]):.1f}"
print(f"| format | fine-tuned, all ops quantized ({metric}) | PTQ of FP32, GEMMs | PTQ of FP32, all ops |")
print("|---|---|---|---|")
for fmt, cells in table.items():
    print(f"| {names.get(fmt, fmt)} | " + " | ".join(cells.get(c, "—") for c in columns) + " |")
PY
