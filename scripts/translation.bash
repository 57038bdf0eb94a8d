#!/usr/bin/env bash
# Translation example: a user's own fairseq model opting in to quantization (user_dir/, `quant_transformer`).
# quant_transformer_tiny (fairseq's transformer, 2+2 layers, 64 dims) is trained on a synthetic language pair in
# FP32 and with W8A8 quantization-aware training (QAT); the test set is decoded (beam 4) from both, and from the
# FP32 checkpoint quantized after training (PTQ) at 8 and 4 bits; prints a markdown table of sacreBLEU scores.
# The two trainings run side by side, one thread each: about 4 minutes on 2 idle CPU cores (5 min of CPU time; 6 min
# measured while other jobs shared the cores).
#
# Usage: bash scripts/translation.bash [--out DIR] [--max-update N]
#   --out DIR         where data and runs go (default runs/translation); each run gets its own timestamped
#                     folder inside, so nothing from an earlier run is overwritten
#   --max-update N    training updates per model (default 600)
#
# Data: user_dir/toy_corpus.py generates the corpus deterministically (fixed seed): source sentences from a small
# English-like grammar, targets a word-by-word dictionary translation into made-up words with three fixed
# reorderings (adjectives after the noun, postpositions, verb last); 20000 train / 500 valid / 500 test sentence
# pairs, binarised with a joined dictionary (--share-all-embeddings ties the encoder and decoder embeddings and
# the decoder's output projection). The data step is idempotent: a second run reuses DIR/data.
#
# PTQ: fairseq-generate's own --model-overrides "{'quantw': True, 'quantin': True, 'bitsw': B, 'bitsin': B}"
# switches the FP32 checkpoint's quantizers on. It recorded no input ranges, so they come from the current
# batch (all decodes use --batch-size 64). The QAT model uses the running ranges it recorded in training.
# Scores: the H- lines of fairseq-generate sorted by sentence id against DIR/data/raw/test.tgt, with the sacrebleu
# CLI (default 13a tokenisation). The corpus has no BPE and no tokenizer, so H- lines are the detokenised text.
# fairseq-generate gets --required-batch-size-multiple 1: with its default of 8, fairseq's data_utils.batch_by_size
# drops the last batch when its size is not a multiple of 8 (fairseq issue #5036), so 4 of the 500 test sentences
# would silently go undecoded; the script also checks that every test sentence has a hypothesis.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=runs/translation
MAX_UPDATE=600
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    --max-update) MAX_UPDATE=${2:?--max-update needs a number}; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "translation.bash: error: unknown argument $1 (expected --out DIR, --max-update N)" >&2; exit 2 ;;
  esac
done
if ! [[ $MAX_UPDATE =~ ^[1-9][0-9]*$ ]]; then
  echo "translation.bash: error: --max-update must be a positive integer, got '$MAX_UPDATE'" >&2
  exit 2
fi
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import fairseq_quant, sacrebleu" >/dev/null 2>&1; then
  echo "translation.bash: error: fairseq_quant or sacrebleu does not import; run 'bash scripts/setup.sh' first" >&2
  exit 1
fi
export OMP_NUM_THREADS=1
USER_DIR=$ROOT/user_dir
RAW=$OUT/data/raw
BIN=$OUT/data/bin
RUN=$OUT/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
mkdir "$RUN"  # fails rather than reuse a folder (a run started in the same second)
SECONDS=0

. "$ROOT/scripts/lib.sh"  # up_to_date

# wait_all PID...: wait for every job; fail (after all have ended) if any failed.
wait_all() {
  local pid failed=0
  for pid in "$@"; do
    wait "$pid" || failed=1
  done
  return $failed
}

echo "== data ($OUT/data)"
# The generator leaves files that already hold the right bytes untouched, so their mtimes say when they changed.
"$PYTHON" "$USER_DIR/toy_corpus.py" "$RAW" >/dev/null
if ! up_to_date "$BIN/preprocess.log" "$RAW"/*.src "$RAW"/*.tgt; then
  rm -rf "$BIN.tmp"
  fairseq-preprocess --source-lang src --target-lang tgt --trainpref "$RAW/train" --validpref "$RAW/valid" \
    --testpref "$RAW/test" --joined-dictionary --workers 1 --destdir "$BIN.tmp" >"$RUN/preprocess.log" 2>&1
  rm -rf "$BIN"
  mv "$BIN.tmp" "$BIN"
fi

train() {  # train NAME [extra fairseq-train flags...]
  local name=$1
  shift
  fairseq-train "$BIN" --user-dir "$USER_DIR" --task translation --source-lang src --target-lang tgt \
    --arch quant_transformer_tiny --share-all-embeddings --dropout 0.1 \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-updates 100 \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 2048 --max-update "$MAX_UPDATE" \
    --disable-validation --no-epoch-checkpoints --no-save-optimizer-state --cpu --seed 1 --num-workers 0 \
    --log-format simple --log-interval 100 --save-dir "$RUN/$name" "$@" >"$RUN/$name.train.log" 2>&1 \
    || { echo "fairseq-train $name failed; the end of $RUN/$name.train.log:" >&2; tail -20 "$RUN/$name.train.log" >&2
         return 1; }
  grep "done training" "$RUN/$name.train.log" | sed "s/^.*| /  $name: /"
}

decode() {  # decode NAME CHECKPOINT [extra fairseq-generate flags...]
  local name=$1 ckpt=$2
  shift 2
  fairseq-generate "$BIN" --user-dir "$USER_DIR" --path "$ckpt" --gen-subset test --source-lang src \
    --target-lang tgt --beam 4 --batch-size 64 --required-batch-size-multiple 1 --num-workers 0 --cpu "$@" \
    >"$RUN/$name.gen" 2>"$RUN/$name.gen.log" \
    || { echo "fairseq-generate $name failed; the end of $RUN/$name.gen.log:" >&2; tail -20 "$RUN/$name.gen.log" >&2
         return 1; }
  grep '^H-' "$RUN/$name.gen" | cut -c3- | sort -n -k1,1 | cut -f3 >"$RUN/$name.hyp"
}

echo "== training FP32 and W8A8 QAT side by side, $MAX_UPDATE updates each (logs: $RUN/*.train.log)"
train fp32 & fp32_pid=$!
train w8a8-qat --quantw --quantin --bitsw 8 --bitsin 8 & qat_pid=$!
wait_all "$fp32_pid" "$qat_pid"

echo "== decoding the test set (beam 4)"
FP32_CKPT=$RUN/fp32/checkpoint_last.pt
ptq() { echo "{'quantw': True, 'quantin': True, 'bitsw': $1, 'bitsin': $1}"; }
decode fp32 "$FP32_CKPT" & p1=$!
decode w8a8-qat "$RUN/w8a8-qat/checkpoint_last.pt" & p2=$!
wait_all "$p1" "$p2"
decode ptq-w8a8 "$FP32_CKPT" --model-overrides "$(ptq 8)" & p1=$!
decode ptq-w4a4 "$FP32_CKPT" --model-overrides "$(ptq 4)" & p2=$!
wait_all "$p1" "$p2"

REF=$RAW/test.tgt
TABLE=$RUN/results.md
{
  echo "| run | precision | BLEU |"
  echo "|---|---|---|"
  for row in "fp32:FP32 training:FP32" "w8a8-qat:W8A8 QAT:W8A8" "ptq-w8a8:PTQ of the FP32 model:W8A8" \
             "ptq-w4a4:PTQ of the FP32 model:W4A4"; do
    IFS=: read -r name label precision <<<"$row"
    n_hyp=$(wc -l <"$RUN/$name.hyp")
    n_ref=$(wc -l <"$REF")
    if [[ $n_hyp -ne $n_ref ]]; then
      echo "translation.bash: error: $name: $n_hyp hypotheses for $n_ref references ($RUN/$name.gen)" >&2
      exit 1
    fi
    echo "| $label | $precision | $(sacrebleu "$REF" -i "$RUN/$name.hyp" -b -w 2) |"
  done
} >"$TABLE"

echo
echo "Test set of the toy language pair ($(wc -l <"$REF") sentences), quant_transformer_tiny, $MAX_UPDATE updates, \
beam 4, sacreBLEU (results: $TABLE); ${SECONDS} s"
cat "$TABLE"
