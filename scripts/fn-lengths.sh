#!/bin/sh
# Lines of each Rust function (signature line to the closing brace at its indentation),
# longest first, those above MIN: `scripts/fn-lengths.sh [MIN] [FILES...]` (default MIN 80,
# every tracked .rs file).
min=${1:-80}
[ $# -gt 0 ] && shift
[ $# -eq 0 ] && set -- $(git ls-files '*.rs')
awk -v min="$min" '
match($0, /^[ \t]*(pub(\([a-z]+\))? )?(const )?(async )?(unsafe )?fn [A-Za-z0-9_]+/) {
  ind = $0; sub(/[^ \t].*/, "", ind)
  name = $0; sub(/.*fn /, "", name); sub(/[^A-Za-z0-9_].*/, "", name)
  n++; start[n] = FNR; indent[n] = ind; fname[n] = name; file[n] = FILENAME
  open[n] = !($0 ~ /;[ \t]*$/ && $0 !~ /\{/)
}
{
  for (k = n; k >= 1; k--) {
    if (open[k] && file[k] == FILENAME && FNR > start[k] && $0 == indent[k] "}") {
      open[k] = 0
      if (FNR - start[k] + 1 > min) printf "%5d %s:%d %s\n", FNR - start[k] + 1, FILENAME, start[k], fname[k]
      break
    }
  }
}' "$@" | sort -rn
