#!/usr/bin/env bash
# Per-layer PTQ sensitivity: bash scripts/experiment1.bash CHECKPOINT DATA [--bits 8|W,I] [--calib-batches N] [--max-sentences N]
# A wrapper of `fairseq-quant-experiment sensitivity --checkpoint CHECKPOINT DATA` (fairseq_quant/cli/experiment.py).
set -euo pipefail
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" >/dev/null
[[ $# -ge 2 && $1 != -* && $2 != -* ]] || { echo "experiment1.bash: error: expected CHECKPOINT DATA [options]" >&2; exit 2; }
exec fairseq-quant-experiment sensitivity --checkpoint "$1" "$2" "${@:3}"
