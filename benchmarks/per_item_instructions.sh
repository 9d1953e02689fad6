#!/usr/bin/env bash
# Usage: bash benchmarks/per_item_instructions.sh [ITEMS] [--syscalls] [--split]
#   (needs valgrind; strace for --syscalls; ~5 min for the table at 20000 items)
#
# The per-item instruction table of issue 17, in markdown: callgrind
# instruction counts per item (difference between runs at ITEMS and 2*ITEMS,
# default 20000, so start-up cancels), the parent and the forked workers
# counted apart (workers summed, waiting not counted), N=2, inc(x)=x+1:
# default settings with range, list and generator input, chunksize=1 with
# range and list input, results bytes(64) and a 10-tuple of floats, the
# serial map and the caller's floor; then the 4-item start-up.
#   --syscalls  also: system calls per item (strace -f -ff over a 10^5-item
#               map, default settings and chunksize=1), parent and workers
#   --split     also: the function-level split (callgrind self cost per item,
#               n to 2n) for default/range, chunksize=1/range and 10-tuples
# Runs the parmapper that Python imports: point PYTHONPATH at a build, e.g.
#   PYTHONPATH=$PWD/python bash benchmarks/per_item_instructions.sh
# How each figure is counted: benchmarks/per_item_table.py.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PY=$(python3 -c "import sys; print(sys.executable)")
n=20000 syscalls=0 split=0
for a in "$@"; do
  case "$a" in
    --syscalls) syscalls=1 ;;
    --split) split=1 ;;
    [0-9]*) n=$a ;;
    *) echo "usage: $0 [ITEMS] [--syscalls] [--split]" >&2; exit 2 ;;
  esac
done
"$PY" "$here/per_item_table.py" table "$n"
if [ "$syscalls" = 1 ]; then
  echo
  "$PY" "$here/per_item_table.py" syscalls 100000
fi
if [ "$split" = 1 ]; then
  echo
  "$PY" "$here/per_item_table.py" split "$n"
fi
