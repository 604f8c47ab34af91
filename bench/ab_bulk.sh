#!/bin/sh
# A/B of TLS bulk throughput and CPU between two builds, interleaved on one
# machine (loopback only):
#
#   sh bench/ab_bulk.sh DIR_A DIR_B [ROUNDS]      (REV=1: app->client instead)
#
# DIR_A and DIR_B hold proxy_public and proxy_private. Each round runs iperf3
# for 3 s through tunnel A, then through tunnel B, and prints per build the
# Mbit/s and the CPU seconds per GB of each side; at the end the medians.
# CPU per GB is steadier than throughput on a busy machine. Needs iperf3 and
# build/bench/tcpbench (make -f bench/Makefile).
set -u
[ $# -ge 2 ] || { echo "usage: sh bench/ab_bulk.sh DIR_A DIR_B [ROUNDS]" >&2; exit 2; }
A=$1 B=$2 ROUNDS=${3:-6}
cd "$(dirname "$0")/.." || exit 2
TB=$(pwd)/build/bench/tcpbench
for f in "$A/proxy_public" "$A/proxy_private" "$B/proxy_public" "$B/proxy_private" "$TB"; do
    [ -x "$f" ] || { echo "ab_bulk: $f missing" >&2; exit 2; }
done
command -v iperf3 >/dev/null || { echo "ab_bulk: iperf3 missing (apt-get install iperf3)" >&2; exit 2; }
FLAG=""
[ "${REV:-0}" = 1 ] && FLAG=-R
TMP=$(mktemp -d /tmp/ab_bulk.XXXXXX) || exit 2
PIDS=""
cleanup() {
    [ -n "$PIDS" ] && kill $PIDS 2>/dev/null
    wait 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
TOKEN=abbulktokenabbulktokenabbulk1234
set -- $("$TB" freeport 7)
IPORT=$1 PA=$2 WA=$3 AA=$4 PB=$5 WB=$6 AB=$7
iperf3 -s -p "$IPORT" -B 127.0.0.1 >/dev/null 2>&1 &
PIDS="$!"
start() { # start NAME DIR TUNNEL_PORT WEB_PORT APP_PORT: sets PUB and PRIV
    mkdir -m 700 "$TMP/$1"
    "$2/proxy_public" "$3" "$4" --bind 127.0.0.1 --token "$TOKEN" --state-dir "$TMP/$1" \
        >"$TMP/$1.public.log" 2>&1 &
    PUB=$!
    "$TB" waitport 127.0.0.1 "$3" 10 || { echo "ab_bulk: $1: public side did not start" >&2; exit 1; }
    "$2/proxy_private" 127.0.0.1 "$3" --token "$TOKEN" --name "ab-$1" \
        --known-hosts "$TMP/$1.known_hosts" --register "e:$5:127.0.0.1:$IPORT" \
        >"$TMP/$1.private.log" 2>&1 &
    PRIV=$!
    PIDS="$PIDS $PUB $PRIV"
    "$TB" waitport 127.0.0.1 "$5" 15 || { echo "ab_bulk: $1: app port not up" >&2; exit 1; }
}
start a "$A" "$PA" "$WA" "$AA"
PUB_A=$PUB PRIV_A=$PRIV
start b "$B" "$PB" "$WB" "$AB"
PUB_B=$PUB PRIV_B=$PRIV
sleep 1
cpu() { "$TB" pstat "$1" | cut -d' ' -f1; }
r=1
while [ $r -le "$ROUNDS" ]; do
    for k in a b; do
        if [ $k = a ]; then port=$AA pub=$PUB_A priv=$PRIV_A; else port=$AB pub=$PUB_B priv=$PRIV_B; fi
        c0=$(cpu $pub) d0=$(cpu $priv)
        out=$(timeout 40 iperf3 -c 127.0.0.1 -p "$port" -t 3 $FLAG -J 2>/dev/null |
            python3 -c 'import json, sys
e = json.load(sys.stdin)["end"]["sum_received"]
print(round(e["bits_per_second"] / 1e6), e["bytes"])' 2>/dev/null)
        [ -n "$out" ] || { echo "ab_bulk: iperf3 through $k failed" >&2; r=$((r + 1)); continue; }
        set -- $out
        line=$(echo "$k $1 $c0 $(cpu $pub) $d0 $(cpu $priv) $2" |
            awk '{ gb = $7 / 1e9; printf "%s %d %.3f %.3f\n", $1, $2, ($4 - $3) / gb, ($6 - $5) / gb }')
        echo "$line"
        echo "$line" >>"$TMP/rounds"
    done
    r=$((r + 1))
done
echo "median over the rounds: build Mbit/s public_cpu_s_per_GB private_cpu_s_per_GB"
for k in a b; do
    for col in 2 3 4; do
        awk -v k=$k -v c=$col '$1 == k { print $c }' "$TMP/rounds" | sort -n |
            awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }' >"$TMP/m.$col"
    done
    echo "$k $(cat "$TMP/m.2") $(cat "$TMP/m.3") $(cat "$TMP/m.4")"
done
