#!/usr/bin/env bash
# Quickstart: set-up, then `fairseq-quant-experiment quickstart`: the pip-shipped MiniLM fine-tuned on the embedded
# default task in FP32 and with W8A8 QAT, PTQ at 8/6/4 bits, the FP32 and INT8 models exported to ONNX and run by
# ONNX Runtime; a table of dev metrics and milliseconds per batch (about 7 minutes on 2 CPU cores).
# Usage: bash scripts/quickstart.sh [--pretrained minilm|HF_DIR | --from-scratch] [--out DIR] [--max-update N]
set -euo pipefail
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
args=()
for a in "$@"; do if [[ $a == --from-scratch ]]; then args+=(--pretrained tiny); else args+=("$a"); fi; done
exec fairseq-quant-experiment quickstart "${args[@]}"
