#!/usr/bin/env bash
# Generate the embedded default task (fairseq_quant/data/default_task.py) and binarise it for fairseq's
# sentence_prediction task.
#
# Usage: bash scripts/prepare_default_task.sh OUT_DIR [--n-train N] [--n-dev N] [--seed S] [--noise R] [--force]
#   (options after OUT_DIR go to the generator; see `python -m fairseq_quant.data.default_task --help`)
#
# Writes
#   OUT_DIR/raw/{train,dev}.tsv                          GLUE SST-2 format: sentence<TAB>label
#   OUT_DIR/tok/{train,valid}.{input0,label}             one sentence / one label per line (dev becomes valid)
#   OUT_DIR/bin/input0/{train,valid}.{bin,idx} dict.txt  sentences; dictionary built from train, used for valid
#   OUT_DIR/bin/label/{train,valid}.{bin,idx} dict.txt   labels; dictionary lists 0 then 1
# then train with `fairseq-train OUT_DIR/bin --task sentence_prediction --num-classes 2 --init-token 0 ...`.
#
# Idempotent: a step whose outputs exist and are newer than its inputs is skipped, and the generator leaves a
# split that already holds the same bytes untouched, so a second run only re-checks. A generator call with
# other options than the files on disk were made with stops with an error unless --force is given.
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
  echo "usage: bash scripts/prepare_default_task.sh OUT_DIR [--n-train N] [--n-dev N] [--seed S] [--force]" >&2
  exit 2
fi
OUT=$1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
RAW=$OUT/raw
TOK=$OUT/tok
BIN=$OUT/bin

. "$ROOT/scripts/lib.sh"  # up_to_date

# 1. Generate. Run as a file, not `-m fairseq_quant.data.default_task`: importing the package imports fairseq
#    (about 6 s), which the pure-Python generator does not need.
"$PYTHON" "$ROOT/fairseq_quant/data/default_task.py" "$RAW" "$@" >/dev/null

# 2. Split each TSV into a sentence file and a label file (dev is fairseq's valid split).
mkdir -p "$TOK"
for pair in train:train dev:valid; do
  tsv=$RAW/${pair%%:*}.tsv
  split=${pair##*:}
  if [[ $(head -n 1 "$tsv") != $'sentence\tlabel' ]]; then
    echo "error: $tsv does not start with the header 'sentence<TAB>label'" >&2
    exit 1
  fi
  for field in input0:1 label:2; do
    file=$TOK/$split.${field%%:*}
    if ! up_to_date "$file" "$tsv"; then
      tail -n +2 "$tsv" | cut -f "${field##*:}" >"$file.tmp"
      mv "$file.tmp" "$file"
    fi
  done
done
# The label dictionary is written, not built: fairseq orders a built one by frequency, and then class k of the
# classifier would be whichever label happened to be more frequent. Listed in order, class k is label k.
if ! up_to_date "$TOK/dict.label.txt" "$TOK/train.label"; then
  awk '{ n[$1]++ } END { print "0", n["0"] + 0; print "1", n["1"] + 0 }' "$TOK/train.label" >"$TOK/dict.label.txt.tmp"
  mv "$TOK/dict.label.txt.tmp" "$TOK/dict.label.txt"
fi

# 3. Binarise one field into BIN/FIELD (built in BIN/FIELD.tmp, moved into place when complete).
#    binarise FIELD [fairseq-preprocess options...]; the console log goes to BIN/FIELD.log.
#    `python -m fairseq_cli.preprocess` is fairseq-preprocess, run by the same interpreter as the generator.
binarise() {
  local field=$1 dest=$BIN/$1 output
  shift
  local inputs=("$TOK/train.$field" "$TOK/valid.$field")
  if [[ $# -gt 0 ]]; then
    inputs+=("$TOK/dict.$field.txt")
  fi
  local complete=1
  for output in dict.txt train.bin train.idx valid.bin valid.idx; do
    up_to_date "$dest/$output" "${inputs[@]}" || complete=0
  done
  if ((complete)); then
    echo "$dest: up to date"
    return 0
  fi
  rm -rf "$dest.tmp"
  if ! "$PYTHON" -m fairseq_cli.preprocess --only-source --trainpref "$TOK/train.$field" --validpref "$TOK/valid.$field" \
    --destdir "$dest.tmp" --workers 2 "$@" >"$BIN/$field.log" 2>&1; then
    echo "error: fairseq-preprocess failed for $field; its log, $BIN/$field.log:" >&2
    tail -n 20 "$BIN/$field.log" >&2
    return 1
  fi
  rm -rf "$dest"
  mv "$dest.tmp" "$dest"
  echo "$dest: binarised"
}

# The two fields are independent, and each fairseq-preprocess spends most of its time importing fairseq: run
# them side by side.
mkdir -p "$BIN"
binarise input0 &
input0_pid=$!
binarise label --srcdict "$TOK/dict.label.txt" &
label_pid=$!
status=0
wait "$input0_pid" || status=1
wait "$label_pid" || status=1
exit "$status"
