#!/usr/bin/env bash
# Binarise one GLUE task for fairseq's sentence_prediction task: a thin wrapper over `fairseq-quant-glue`
# (fairseq_quant/data/glue.py holds the task table and the details).
#
# Usage: bash scripts/preproc.bash GLUE_DIR TASK OUT_BIN TOKENISER [--srcdict DICT] [--workers N]
#                                  [--max-train N [--seed S]] [--force]
#   GLUE_DIR   holds TASK/{train,dev,test}.tsv, as scripts/download_glue.py writes them
#   TASK       CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE or WNLI
#   TOKENISER  --bpe gpt2 --encoder-json FILE --vocab-bpe FILE   (RoBERTa; needs --srcdict)
#              --wordpiece VOCAB_TXT [--no-lowercase]              (BERT family; needs --srcdict)
#              --whitespace                                        (text already tokenised)
# Writes OUT_BIN/{input0,input1,label}/ for `fairseq-train OUT_BIN --task sentence_prediction ...` and prints the
# task's fairseq-train flags (number of classes, --report-* metrics, --best-checkpoint-metric).
set -euo pipefail

if [[ $# -lt 3 || $1 == -* ]]; then
  sed -n '5,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
exec "${PYTHON:-python3}" -m fairseq_quant.cli.glue "$@"
