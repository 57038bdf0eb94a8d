#!/usr/bin/env bash
# Translation: bash scripts/translation.bash [--max-update N] [--out DIR]
# A wrapper of `fairseq-quant-experiment translation` (fairseq_quant/cli/experiment.py; its --help lists the options).
set -euo pipefail
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" >/dev/null
exec fairseq-quant-experiment translation "$@"
