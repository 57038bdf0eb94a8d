#!/usr/bin/env bash
# The number-formats table: bash scripts/formats_table.bash [DATA] [--formats bf16,posit8,fp8,int8] [--max-update N]
# A wrapper of `fairseq-quant-experiment formats` (fairseq_quant/cli/experiment.py; its --help lists the options).
set -euo pipefail
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" >/dev/null
exec fairseq-quant-experiment formats "$@"
