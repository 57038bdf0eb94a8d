#!/usr/bin/env bash
# Set-up, then the whole test suite (on every core, with pytest-xdist: most tests run fairseq in subprocesses of
# one thread each).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FAIRSEQ_QUANT_SET_UP="$(cat .setup-stamp)"  # set up and checked just now: the scripts under test skip it
workers=$(python3 -c "import os; print(min(os.cpu_count() or 1, 4))")
python3 -m pytest -q -n "$workers" tests "$@"
