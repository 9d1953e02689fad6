#!/usr/bin/env bash
# The C benchmark of the jobs API (bench_job.c): builds it, runs it (~2 min
# on 2 cores) and puts its section into docs/benchmarks.md, between the
# markers <!-- c-bench:begin --> and <!-- c-bench:end --> (appended under
# "## The C library (jobs API)" when the file has no markers yet).
#
#   bash benchmarks/c/run.sh                 engine from the work tree
#   bash benchmarks/c/run.sh --rev HEAD      engine from a commit (git archive),
#                                            immune to edits of the work tree
#   bash benchmarks/c/run.sh --quick         smoke run; prints the section only
#   bash benchmarks/c/run.sh --md FILE       write FILE instead of docs/benchmarks.md
#   bash benchmarks/c/run.sh --no-write      print the section only
# Other options go to bench_job: --reps R (default 9), --only abcde,
# --ring-bytes N.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cmd="bash benchmarks/c/run.sh${*:+ $*}"

rev="" md="$root/docs/benchmarks.md" write=1 args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rev) rev=$2; shift 2 ;;
        --md) md=$2; write=2; shift 2 ;;
        --no-write) write=0; shift ;;
        --quick) args+=("$1"); [ "$write" = 1 ] && write=0; shift ;;
        *) args+=("$1"); shift ;;
    esac
done

if [ -n "$rev" ]; then
    sha=$(git -C "$root" rev-parse --short "$rev^{commit}")
    engine="$here/build/rev-$sha/engine"
    if [ ! -d "$engine" ]; then
        mkdir -p "$here/build/rev-$sha"
        git -C "$root" archive "$sha" engine | tar -x -C "$here/build/rev-$sha"
    fi
    build="$here/build/rev-$sha"
    note="built from commit $sha (\`git archive\` of engine/)"
else
    engine="$root/engine"
    build="$here/build/worktree"
    sha=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "?")
    note="the work tree at commit $sha"
    if [ -n "$(git -C "$root" status --porcelain -- engine 2>/dev/null)" ]; then
        note="$note, with uncommitted changes in engine/"
    fi
fi

make -s -C "$here" ENGINE="$engine" BUILD="$build" >&2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$build/bench_job" ${args[@]+"${args[@]}"} --command "$cmd" --note "$note" >"$out"

if [ "$write" = 0 ]; then
    cat "$out"
    exit 0
fi
python3 - "$md" "$out" <<'PYEOF'
import os, sys
md, sec_path = sys.argv[1], sys.argv[2]
BEGIN, END = "<!-- c-bench:begin -->", "<!-- c-bench:end -->"
HEADING = "## The C library (jobs API)"
sec = open(sec_path).read().strip("\n")
try:
    doc = open(md).read()
except FileNotFoundError:
    doc = "# Benchmarks\n"
i = doc.find(BEGIN)
j = doc.find(END, i + 1) if i >= 0 else -1
if i >= 0 and j >= 0:
    doc = doc[:i] + sec + doc[j + len(END):]
else:
    doc = doc.rstrip("\n") + "\n\n" + HEADING + "\n\n" + sec + "\n"
tmp = md + ".tmp"
with open(tmp, "w") as f:
    f.write(doc)
os.replace(tmp, md)
print("wrote the C-bench section of " + md, file=sys.stderr)
PYEOF
