#!/usr/bin/env bash
# BF16 vs --int8-training modes: bash scripts/int8_training.bash [DATA] [--modes bf16,fwd,fwd_dgrad,all,all_sr] [--seeds 1,2]
# A wrapper of `fairseq-quant-experiment int8-training` (fairseq_quant/cli/experiment.py; its --help lists the options).
set -euo pipefail
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" >/dev/null
exec fairseq-quant-experiment int8-training "$@"
