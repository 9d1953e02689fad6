#!/bin/sh
# layers.sh OBJECT... -- checks that the engine's files call one way.
#
# From nm of the objects (one per src/*.c): which file defines each global
# name and which names each file uses, hence the graph "file A calls into
# file B".  Fails, printing the circle, when that graph has one; otherwise
# prints the files layer by layer, lowest first (layer 0 calls into no other
# file; each file calls only into lower layers).  Fails too on a circle of
# #include "..." among src/ and include/.  Run by make check (make layers).
set -eu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# "D file name" for each global name a file defines, "U file name" for each
# it uses from elsewhere.
for o in "$@"; do
    nm "$o" | awk -v f="$(basename "$o" .o).c" '
        $1 == "U" { print "U", f, $2 }
        NF == 3 && $2 ~ /^[A-TV-Z]$/ { print "D", f, $3 }'
done >"$tmp/syms"

# "A B" for each file A using a name that file B defines; "A A" for every
# file, so that one calling no other is still listed.
awk '$1 == "D" { def[$3] = $2; files[$2] = 1; next }
     { use[NR] = $2 " " $3; files[$2] = 1 }
     END {
         for (f in files) print f, f
         for (i in use) {
             split(use[i], u, " ")
             if ((u[2] in def) && def[u[2]] != u[1]) print u[1], def[u[2]]
         }
     }' "$tmp/syms" | sort -u >"$tmp/calls"

circle() { # $1: what, $2: the pairs "A B"
    if ! tsort "$2" >/dev/null 2>"$tmp/err"; then
        echo "layers: a circle of $1 between these files:"
        sed -n 's/^tsort: \([^:]*\)$/\1/p' "$tmp/err" | sort -u >"$tmp/loop"
        sed 's/^/  /' "$tmp/loop"
        echo "layers: the $1 among them (A -> B):"
        awk 'NR == FNR { in_loop[$1] = 1; next }
             $1 != $2 && ($1 in in_loop) && ($2 in in_loop) {
                 print "  " $1 " -> " $2 }' "$tmp/loop" "$2"
        exit 1
    fi
}
circle calls "$tmp/calls"

# The layer of a file: one above the highest file it calls into.
awk '$1 != $2 { from[++n] = $1; to[n] = $2; calls[$1] = calls[$1] " " $2 }
     { level[$1] += 0; level[$2] += 0 }
     END {
         do {
             changed = 0
             for (i = 1; i <= n; i++)
                 if (level[from[i]] < level[to[i]] + 1) {
                     level[from[i]] = level[to[i]] + 1
                     changed = 1
                 }
         } while (changed)
         for (f in level)
             printf "%d  %s\n", level[f],
                    calls[f] ? sprintf("%-14s ->%s", f, calls[f]) : f
     }' "$tmp/calls" | sort -k1,1n -k2,2 >"$tmp/layers"
echo "layers: $(wc -l <"$tmp/layers" | tr -d ' ') files," \
     "$(awk '$1 != $2' "$tmp/calls" | wc -l | tr -d ' ') calls between files," \
     "no circle; each calls only into lower layers:"
sed 's/^/  /' "$tmp/layers"

# #include "..." between the engine's own files.
dir=$(dirname "$0")
for f in "$dir"/src/*.[ch] "$dir"/include/*.h; do
    b=$(basename "$f")
    echo "$b $b"
    sed -n 's/^#include "\(.*\)".*/\1/p' "$f" | sed "s|^|$b |"
done >"$tmp/includes"
circle includes "$tmp/includes"
echo "layers: no #include circle ($(awk '$1 != $2' "$tmp/includes" |
     wc -l | tr -d ' ') includes between the engine's files)"
