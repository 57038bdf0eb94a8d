#!/usr/bin/env bash
# The PTQ/QAT table: bash scripts/ptq_table.bash [DATA] [--pretrained minilm|HF_DIR] [--max-update N] [--calib-batches N] [--adaround-iters N]
# A wrapper of `fairseq-quant-experiment ptq` (fairseq_quant/cli/experiment.py; its --help lists the options).
set -euo pipefail
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" >/dev/null
exec fairseq-quant-experiment ptq "$@"
