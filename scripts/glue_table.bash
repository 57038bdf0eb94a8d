#!/usr/bin/env bash
# GLUE tasks from their TSVs: bash scripts/glue_table.bash GLUE_DIR [--tasks SST-2,MRPC] [--max-train N] [--max-update N] [--lr LR]
# A wrapper of `fairseq-quant-experiment glue` (fairseq_quant/cli/experiment.py; its --help lists the options).
set -euo pipefail
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" >/dev/null
exec fairseq-quant-experiment glue "$@"
