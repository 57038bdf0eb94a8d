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
    hf_dir=$(python3 -c "from fairseq_quant.minilm import minilm_dir; print(minilm_dir())")
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
