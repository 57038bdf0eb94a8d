#!/usr/bin/env bash
# CPT periods and bit ranges: bash scripts/experiment3.bash [DATA] [--periods 2,8,32] [--ranges 3-8,4-8,6-8] [--period 8] [--range 4-8]
# A wrapper of `fairseq-quant-experiment cpt-sweep` (fairseq_quant/cli/experiment.py; its --help lists the options).
set -euo pipefail
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" >/dev/null
exec fairseq-quant-experiment cpt-sweep "$@"
