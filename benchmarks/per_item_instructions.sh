#!/usr/bin/env bash
# Usage: bash benchmarks/per_item_instructions.sh [ITEMS]   (needs valgrind; ~1 min for 20000)
# Instructions per item on the chunksize=1 path, counted by callgrind:
# parent = MapIter_next - pm__spin_until (inclusive: its waiting), worker = slot_main - worker_wait.
set -u
N=${1:-20000}
PY=$(python3 -c "import sys; print(sys.executable)")
dir=$(mktemp -d)
cat > "$dir/run.py" <<PYEOF
import parmapper
def f(x): return x + 1
r = list(parmapper.parmap(f, range($N), N=2, chunksize=1))
assert r[-1] == $N
PYEOF
(cd "$dir" && PM_STOP_GRACE_MS=30000 valgrind --tool=callgrind --trace-children=yes "$PY" run.py >/dev/null 2>&1)
# Annotated from the scratch directory: run from inside a source tree,
# callgrind_annotate shortens that tree's paths and then splits a function's
# inclusive count by the file its inlined code came from (a header's, a
# unity build's parts), and the first line read here was only a share of it.
get() { (cd "$dir" && callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null) | awk -v fn="$2" '$0 ~ ":"fn" " {gsub(",","",$1); print $1; exit}'; }
for f in "$dir"/callgrind.out.*; do
  m=$(get "$f" MapIter_next); s=$(get "$f" slot_main)
  if [ -n "$s" ]; then
    w=$(get "$f" worker_wait); items=$(( N / 2 ))
    echo "worker $(basename "$f"): $(( (s - ${w:-0}) / items )) instructions/item (slot_main $s, waiting ${w:-0}, ~$items items)"
  elif [ -n "$m" ]; then
    i=$(get "$f" pm__spin_until)
    echo "parent: $(( (m - ${i:-0}) / N )) instructions/item (MapIter_next $m, waiting ${i:-0}, $N items)"
  fi
done
rm -rf "$dir"
