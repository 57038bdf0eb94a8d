#!/usr/bin/env bash
# CPU deployment table: bash scripts/onnx_table.bash [DATA] [--max-update N]
# A wrapper of `fairseq-quant-experiment onnx` (fairseq_quant/cli/experiment.py; its --help lists the options).
set -euo pipefail
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" >/dev/null
exec fairseq-quant-experiment onnx "$@"
