#!/usr/bin/env bash
# INT8 mixed-precision training: one task fine-tuned in BF16 (fairseq --bf16) and with --int8-training fwd,
# fwd_dgrad, all, and all with stochastic rounding of the gradients (each also --bf16 for everything else), for
# each seed; prints a markdown table of the dev metric and the training time of every run.
#
# Usage: bash scripts/int8_training.bash [DATA] [--pretrained minilm|HF_DIR] [--max-update N] [--lr LR]
#                                        [--seeds 1,2] [--modes bf16,fwd,fwd_dgrad,all,all_sr] [--out DIR]
#   DATA omitted  the embedded default task, quant_roberta_tiny from random initialisation (3000 updates)
#   DATA          a GLUE task binarised by `fairseq-quant-glue` with the vocabulary of --pretrained
#   --out DIR     runs go to DIR/<timestamp>-<task> (default runs/int8_training)
# On a CPU the INT8 matmuls run through torch._int_mm (the Triton kernels need a GPU): the table shows what
# INT8 training does to accuracy; for speed see benchmarks/int8_training.py on a GPU.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/lib.sh"  # common_option, start_run, finetune, ev
DATA=
PRETRAINED=
MAX_UPDATE=
LR=
SEEDS=1
MODES=bf16,fwd,fwd_dgrad,all,all_sr
OUT=runs/int8_training
usage() { sed -n '6,11p' "$ROOT/scripts/int8_training.bash" >&2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --seeds) SEEDS=$2; shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) common_option int8_training.bash "$@"
       [[ $CONSUMED -gt 0 ]] || { echo "int8_training.bash: error: unknown option $1" >&2; usage; exit 2; }
       shift "$CONSUMED" ;;
  esac
done
[[ $SEEDS =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "int8_training.bash: error: --seeds expects integers like 1,2,3," \
  "got '$SEEDS'" >&2; exit 2; }
IFS=, read -r -a MODE_LIST <<<"$MODES"
for mode in "${MODE_LIST[@]}"; do
  case $mode in
    bf16|fwd|fwd_dgrad|all|all_sr) ;;
    *) echo "int8_training.bash: error: --modes takes bf16, fwd, fwd_dgrad, all, all_sr; got '$mode'" >&2; exit 2 ;;
  esac
done

bash "$ROOT/scripts/setup.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start_run "$OUT" "$DATA" "$PRETRAINED" int8_training.bash  # DATA, NAME, RUN, RESULTS, MODEL_FLAGS, TASK_FLAGS

IFS=, read -r -a SEED_LIST <<<"$SEEDS"
for seed in "${SEED_LIST[@]}"; do
  for mode in "${MODE_LIST[@]}"; do
    case $mode in
      bf16) flags=() ;;
      all_sr) flags=(--int8-training all --int8-stochastic-rounding) ;;
      *) flags=(--int8-training "$mode") ;;
    esac
    start=$SECONDS
    finetune "$mode" "$seed" --bf16 "${flags[@]}"
    ev --checkpoint "$RUN/$mode-seed$seed/checkpoint_best.pt" --tag "$mode, seed $seed ($((SECONDS - start)) s)"
  done
done

echo
echo "INT8 training, $NAME, $MAX_UPDATE updates (dev metric in %; runs: $RUN)"
python3 "$ROOT/scripts/results_table.py" "$RESULTS" | tee "$RUN/table.md"
