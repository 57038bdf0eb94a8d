#!/usr/bin/env bash
# Static 8-bit vs CPT: bash scripts/experiment2.bash [DATA] [--cpt-configs a.json,b.json] [--seeds 1,2]
# A wrapper of `fairseq-quant-experiment cpt` (fairseq_quant/cli/experiment.py; its --help lists the options).
set -euo pipefail
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" >/dev/null
exec fairseq-quant-experiment cpt "$@"
