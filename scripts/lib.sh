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
