#!/bin/sh
# check.sh DIR -- runs DIR/wordcount and DIR/risky and checks what they say:
# wordcount against wc(1) on generated files, risky's per-item lines and
# summary.  Prints "check.sh: ok" or says what differs and exits 1.
set -eu

dir=${1:?usage: check.sh DIR}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export LC_ALL=C # words are runs of non-space bytes, in wc as in wordcount

fail() {
    echo "check.sh: FAILED: $*" >&2
    exit 1
}

# A few MB of text: words separated by every kind of white space, empty and
# blank lines, CRLF endings, one line of ~300 kB (larger than a chunk), and
# a last line without a newline.
awk 'BEGIN {
    srand(7)
    nsep = split("  |\t| \t |\r|\v|\f", sep, "|")
    for (i = 0; i < 60000; i++) {
        r = rand()
        nw = (i == 30000) ? 40000 : int(rand() * 20)
        if (r < 0.05 && nw < 40000) { print ""; continue }
        if (r < 0.07 && nw < 40000) { print " \t \f"; continue }
        line = ""
        for (w = 0; w < nw; w++) {
            s = (rand() < 0.7) ? " " : sep[1 + int(rand() * nsep)]
            line = line s substr("lorem-ipsum,dolor.sit(amet)42", 1 + int(rand() * 10), 1 + int(rand() * 9))
        }
        print line ((r > 0.9) ? "\r" : "")
    }
    printf "last line, no newline"
}' >"$tmp/text"
printf '' >"$tmp/empty"
printf 'x' >"$tmp/one"
printf '\n\n\n' >"$tmp/newlines"
printf '  a\tb  \n c' >"$tmp/small"

# wordcount's three numbers must be wc's, whatever the input path and -j.
same() {
    want=$(wc -l -w -c <"$1" | awk '{print $1, $2, $3}')
    shift
    "$@" >"$tmp/out" || fail "$* exited with status $?"
    got=$(awk '{print $1, $2, $3}' "$tmp/out")
    [ "$got" = "$want" ] || fail "$*: got '$got', wc says '$want'"
}
for f in text empty one newlines small; do
    same "$tmp/$f" "$dir/wordcount" "$tmp/$f"
done
same "$tmp/text" "$dir/wordcount" -j 1 "$tmp/text"
same "$tmp/text" "$dir/wordcount" -j 3 "$tmp/text"
same "$tmp/text" sh -c "\"$dir/wordcount\" <\"$tmp/text\""
same "$tmp/text" sh -c "cat \"$tmp/text\" | \"$dir/wordcount\" -j 2 -"
if "$dir/wordcount" "$tmp/absent" >/dev/null 2>"$tmp/err"; then
    fail "wordcount on a missing file succeeded"
fi
grep -q 'No such file' "$tmp/err" || fail "wordcount: missing file: $(cat "$tmp/err")"
echo "check.sh: wordcount agrees with wc ($(wc -c <"$tmp/text") bytes, -j 1/2/3, file/stdin/pipe)"

# risky: every item reported, in order, with its own fate; exit status 0.
"$dir/risky" >"$tmp/risky" || fail "risky exited with status $?"
expect() {
    grep -qx -- "$1" "$tmp/risky" || {
        cat "$tmp/risky" >&2
        fail "risky: no line '$1'"
    }
}
expect ' 0  primes below 1000      ok: 168 primes'
expect ' 1  primes below 100000    ok: 9592 primes'
expect ' 2  a segfault             crashed by signal 11 (Segmentation fault)'
expect ' 3  primes below 2         ok: 0 primes'
expect ' 4  abort()                crashed by signal 6 (Aborted)'
expect ' 5  primes below -5        failed with code 1: n must not be negative'
expect ' 6  _exit(3)               exited with status 3'
expect ' 7  an endless loop        timed out after 1000 ms'
expect ' 8  primes below 1000000   ok: 78498 primes'
expect ' 9  primes below 10        ok: 4 primes'
expect 'summary: 5 ok, 1 failed, 2 crashed by a signal, 1 exited, 1 timed out'
[ "$(wc -l <"$tmp/risky")" -eq 11 ] || fail "risky printed $(wc -l <"$tmp/risky") lines, not 11"
echo "check.sh: risky reports all 10 items ($(tail -n 1 "$tmp/risky"))"
echo "check.sh: ok"
