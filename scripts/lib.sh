# Shell helpers shared by the scripts (source it: `. "$ROOT/scripts/lib.sh"`).

# up_to_date TARGET SOURCE...: TARGET exists and is newer than every SOURCE.
up_to_date() {
  local target=$1 source
  shift
  [[ -e $target ]] || return 1
  for source in "$@"; do
    [[ $target -nt $source ]] || return 1
  done
}

# use_pretrained OUT SPEC: convert SPEC (minilm: the pip-shipped all-MiniLM-L6-v2; or a Hugging Face directory)
# once into OUT/pretrained/NAME; sets NAME, CONVERTED (the fairseq checkpoint's folder) and ARCH_FLAGS.
use_pretrained() {
  local out=$1 spec=$2 hf_dir
  if [[ $spec == minilm ]]; then
    hf_dir=$(python3 -c "from fairseq_quant.data.minilm import minilm_dir; print(minilm_dir())")
    NAME=minilm
  elif [[ -f $spec/config.json ]]; then
    hf_dir=$spec
    NAME=$(basename "$spec")
  else
    echo "$(basename "$0"): error: --pretrained expects 'minilm' or a Hugging Face model directory with a config.json, got '$spec'" >&2
    return 2
  fi
  CONVERTED=$out/pretrained/$NAME
  [[ -f $CONVERTED/model.pt ]] || fairseq-quant-convert-hf "$hf_dir" "$CONVERTED"
  read -r -a ARCH_FLAGS <"$CONVERTED/fairseq_args.txt"
}

# common_option SCRIPT ARGS...: one of the options every experiment script takes (--pretrained, --max-update, --lr,
# --out, or the DATA directory) at the head of ARGS: sets PRETRAINED, MAX_UPDATE, LR, OUT or DATA, and CONSUMED
# (how many words it took; 0 for an option that is not one of them).
common_option() {
  local script=$1
  shift
  CONSUMED=2
  case $1 in
    --pretrained) PRETRAINED=$2 ;;
    --max-update) MAX_UPDATE=$2 ;;
    --lr) LR=$2 ;;
    --out) OUT=$2 ;;
    -*) CONSUMED=0 ;;
    *) [[ -z $DATA ]] || { echo "$script: error: one DATA directory, got '$DATA' and '$1'" >&2; exit 2; }
       DATA=$1
       CONSUMED=1 ;;
  esac
}

# experiment_task OUT DATA PRETRAINED SCRIPT: the task and model of an experiment script.
#   DATA empty: the embedded default task (prepared under OUT/data), quant_roberta_tiny from random
#               initialisation, MAX_UPDATE 3000 and LR 1e-3 unless already set;
#   DATA set:   a GLUE task binarised by `fairseq-quant-glue` with the vocabulary of PRETRAINED (default
#               minilm), fine-tuning the converted encoder, MAX_UPDATE 300 and LR 1e-4 unless already set.
# Sets DATA, NAME, MODEL_FLAGS, TASK_FLAGS, MAX_UPDATE, LR; errors name SCRIPT and exit 2.
experiment_task() {
  local out=$1 pretrained=$3 script=$4 task
  DATA=$2
  if [[ -z $DATA ]]; then
    [[ -z $pretrained ]] || { echo "$script: error: --pretrained needs DATA prepared with its vocabulary" >&2
                              exit 2; }
    bash "$ROOT/scripts/prepare_default_task.sh" "$out/data"
    DATA=$out/data/bin
    NAME=default-task
    MODEL_FLAGS=(--arch quant_roberta_tiny --max-positions 64)
    TASK_FLAGS=(--num-classes 2 --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric)
    MAX_UPDATE=${MAX_UPDATE:-3000}
    LR=${LR:-1e-3}
    return
  fi
  [[ -f $DATA/glue_task.json ]] || { echo "$script: error: $DATA has no glue_task.json; prepare it with" \
    "fairseq-quant-glue GLUE_DIR TASK OUT --wordpiece VOCAB --srcdict DICT" >&2; exit 2; }
  use_pretrained "$out" "${pretrained:-minilm}"
  if ! cmp -s "$DATA/input0/dict.txt" "$CONVERTED/dict.txt"; then
    echo "$script: error: $DATA/input0/dict.txt is not the vocabulary of $NAME ($CONVERTED/dict.txt):" \
      "prepare the task with --srcdict $CONVERTED/dict.txt" >&2
    exit 2
  fi
  task=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['task'])" "$DATA/glue_task.json")
  read -r -a TASK_FLAGS < <(python3 -c "from fairseq_quant.data.glue import fairseq_train_flags as f; print(*f('$task'))")
  MODEL_FLAGS=("${ARCH_FLAGS[@]}" --restore-file "$CONVERTED/model.pt" --reset-optimizer --reset-dataloader
    --reset-meters --reset-lr-scheduler --shorten-method truncate)
  NAME=$task-$NAME
  MAX_UPDATE=${MAX_UPDATE:-300}
  LR=${LR:-1e-4}
}

# finetune RUN_NAME SEED [fairseq-train flags...]: one fine-tuning run of the experiment_task model on DATA into
# RUN/RUN_NAME-seedSEED (log beside it, appended to LOGS as RUN_NAME=LOG); stops the script when it fails.
finetune() {
  local name=$1 seed=$2
  shift 2
  echo "== $name, seed $seed (log: $RUN/$name-seed$seed.log)"
  fairseq-train "$DATA" --user-dir "$ROOT/fairseq_quant" --task sentence_prediction "${TASK_FLAGS[@]}" \
    "${MODEL_FLAGS[@]}" --init-token 0 --separator-token 2 --criterion sentence_prediction --optimizer adam \
    --adam-betas '(0.9, 0.98)' --lr "$LR" --lr-scheduler polynomial_decay --warmup-updates $((MAX_UPDATE / 10)) \
    --total-num-update "$MAX_UPDATE" --max-update "$MAX_UPDATE" --batch-size 32 --dropout 0.1 \
    --attention-dropout 0.1 --weight-decay 0.01 --cpu --seed "$seed" --num-workers 0 --no-epoch-checkpoints \
    --no-last-checkpoints --validate-interval-updates $((MAX_UPDATE > 3 ? MAX_UPDATE / 3 : 1)) \
    --log-format simple --log-interval $((MAX_UPDATE > 300 ? MAX_UPDATE / 300 : 1)) \
    --save-dir "$RUN/$name-seed$seed" "$@" >"$RUN/$name-seed$seed.log" 2>&1 \
    || { tail -n 20 "$RUN/$name-seed$seed.log" >&2; exit 1; }
  LOGS+=("$name=$RUN/$name-seed$seed.log")
}

# start_run OUT DATA PRETRAINED SCRIPT: experiment_task, then a new timestamped run folder RUN=OUT/<time>-NAME with
# RESULTS=RUN/results.csv (evaluate.py rows), and LOGS=() for finetune.
start_run() {
  experiment_task "$@"
  RUN=$1/$(date +%Y%m%d-%H%M%S)-$NAME
  mkdir -p "$RUN"
  RESULTS=$RUN/results.csv
  LOGS=()
}

# ev [evaluate.py flags...]: evaluate on DATA's valid split, appending a row to RESULTS (stderr to RUN/evaluate.log);
# stops the script when it fails.
ev() {
  python3 "$ROOT/scripts/evaluate.py" --data "$DATA" --split valid --cpu --csv "$RESULTS" "$@" \
    2>>"$RUN/evaluate.log" >/dev/null || { tail -n 5 "$RUN/evaluate.log" >&2; exit 1; }
}
