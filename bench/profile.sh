#!/bin/sh
# bench/profile.sh: a bulk transfer through the tunnel (both proxies under
# valgrind --tool=callgrind), then the top functions of each side.
#
#   sh bench/profile.sh                 # iperf3 for PROFILE_SECONDS (10), client→app
#   PROFILE_REVERSE=1 sh bench/profile.sh   # app→client instead
#   PROFILE_WORKLOAD=conns sh bench/profile.sh  # new-connection churn instead of bulk
#   PROFILE_TOP=30 PROFILE_ARGS="--insecure-plaintext" ...
#   PROFILE_TOOL=strace sh bench/profile.sh     # syscall counts per side instead
#                                               # (callgrind sees no kernel time)
#
# The callgrind files stay in build/bench/profile/ for callgrind_annotate or
# kcachegrind (e.g. `callgrind_annotate --inclusive=yes FILE`, `--tree=caller`).
# Loopback only; everything started is stopped on every exit path.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

SECONDS_RUN=${PROFILE_SECONDS:-10}
TOP=${PROFILE_TOP:-25}
WORKLOAD=${PROFILE_WORKLOAD:-bulk}
EXTRA=${PROFILE_ARGS:-}
TOOL=${PROFILE_TOOL:-callgrind}
TOKEN="profile-$$-token"
TB="$ROOT/build/bench/tcpbench"
OUT="$ROOT/build/bench/profile"

case $TOOL in
strace) NEEDS="strace iperf3 curl" ;;
*) NEEDS="valgrind callgrind_annotate callgrind_control iperf3 curl" ;;
esac
for c in $NEEDS; do
    command -v $c >/dev/null 2>&1 || { echo "profile: missing $c (apt-get install valgrind strace iperf3 curl)" >&2; exit 1; }
done
[ -x ./proxy_public ] && [ -x ./proxy_private ] || { echo "profile: run make first" >&2; exit 1; }
make -s -f bench/Makefile || exit 1
mkdir -p "$OUT" && rm -f "$OUT"/*

# With a TLS-capable build, the default is TLS; PROFILE_ARGS=--insecure-plaintext
# profiles plaintext. Say which one is measured.
if ./proxy_public --help 2>&1 | grep -q -- '--insecure-plaintext'; then
    case " $EXTRA " in *" --insecure-plaintext "*) MODE=plaintext ;; *) MODE=TLS ;; esac
else
    MODE="plaintext (no TLS mode yet)"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tunnel-profile.XXXXXX") || exit 1
PIDS=""
cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$PIDS" ]; then
        all=$("$TB" pids $PIDS 2>/dev/null)
        [ -n "$all" ] && kill $all 2>/dev/null
        sleep 1
        all=$("$TB" pids $PIDS 2>/dev/null)
        [ -n "$all" ] && kill -9 $all 2>/dev/null
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

spawn() { # spawn LOGNAME CMD...; pid in $SPAWNED
    n=$1
    shift
    "$@" >"$OUT/$n.log" 2>&1 &
    SPAWNED=$!
    PIDS="$PIDS $SPAWNED"
}

set -- $("$TB" freeport 5)
TPORT=$1 WPORT=$2 APP_PORT=$3 PUB_PORT=$4 ECHO_PORT=$5

if [ "$WORKLOAD" = conns ]; then
    spawn echo "$TB" echo-server "$APP_PORT"
else
    spawn iperf3-server iperf3 -s -B 127.0.0.1 -p "$APP_PORT"
fi
APP_PID=$SPAWNED
"$TB" waitport 127.0.0.1 "$APP_PORT" 10 || exit 1

# The tool each proxy runs under; the output file is named after the side.
wrap() { # wrap SIDE: prints the command prefix
    case $TOOL in
    strace) echo "strace -f -c -o $OUT/strace.$1" ;;
    *) echo "valgrind --tool=callgrind --dump-instr=no --collect-jumps=no --callgrind-out-file=$OUT/callgrind.$1" ;;
    esac
}
PUB_EXTRA=$EXTRA
./proxy_public --help 2>&1 | grep -q -- '--bind' && PUB_EXTRA="--bind 127.0.0.1 $EXTRA"
# shellcheck disable=SC2046,SC2086
spawn proxy_public $(wrap proxy_public) \
    ./proxy_public "$TPORT" "$WPORT" --token "$TOKEN" --state-dir "$TMP" $PUB_EXTRA
PUB_PID=$SPAWNED
"$TB" waitport 127.0.0.1 "$TPORT" 60 || { echo "profile: proxy_public did not start" >&2; tail "$OUT/proxy_public.log" >&2; exit 1; }
PRIV_EXTRA=$EXTRA
case " $EXTRA " in
*" --insecure-plaintext "*) ;;
*) ./proxy_private --help 2>&1 | grep -q -- '--known-hosts' && PRIV_EXTRA="--known-hosts $TMP/known_hosts $EXTRA" ;;
esac
# shellcheck disable=SC2046,SC2086
spawn proxy_private $(wrap proxy_private) \
    ./proxy_private 127.0.0.1 "$TPORT" --token "$TOKEN" --name profile \
    --register "profile-app:$PUB_PORT:127.0.0.1:$APP_PORT" $PRIV_EXTRA
PRIV_PID=$SPAWNED

i=0
while [ $i -lt 300 ]; do
    n=$(curl -s -m 5 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$WPORT/list" |
        tr -d ' \t\r\n' | tr '}' '\n' | grep '"name":"profile-app"' | grep -c '"online":true')
    [ "$n" = 1 ] && break
    kill -0 $PUB_PID 2>/dev/null && kill -0 $PRIV_PID 2>/dev/null || break
    sleep 0.2
    i=$((i + 1))
done
[ "$n" = 1 ] || { echo "profile: app never online" >&2; tail "$OUT"/proxy_*.log >&2; exit 1; }

echo "profile: mode $MODE, workload $WORKLOAD, $SECONDS_RUN s, both proxies under $TOOL" >&2
if [ "$WORKLOAD" = conns ]; then
    "$TB" connrate 127.0.0.1 "$PUB_PORT" "$SECONDS_RUN" 8 >"$OUT/workload.txt"
    echo "profile: connrate (conns/s ok errors): $(cat "$OUT/workload.txt")" >&2
    UNITS=$(cut -d' ' -f2 "$OUT/workload.txt") UNIT_NAME=connection
else
    flag=""
    [ "${PROFILE_REVERSE:-0}" = 1 ] && flag=-R
    timeout $((SECONDS_RUN + 60)) iperf3 -c 127.0.0.1 -p "$PUB_PORT" -t "$SECONDS_RUN" $flag -J >"$OUT/workload.json" 2>&1
    UNITS=$(awk '/"sum_received"/ { f = 1 } f && /"bytes"/ { v = $0; sub(/.*:[ \t]*/, "", v); sub(/,.*/, "", v);
                printf "%.1f", v / 1048576; exit }' "$OUT/workload.json") UNIT_NAME=MiB
    echo "profile: iperf3 moved ${UNITS:-?} MiB in $SECONDS_RUN s under $TOOL" >&2
fi

if [ "$TOOL" = strace ]; then
    # strace prints its summary when the traced proxy exits: stop the proxies
    # (strace's children), then wait for strace itself.
    for p in $PRIV_PID $PUB_PID; do
        kids=$("$TB" pids "$p" | grep -vx "$p")
        [ -n "$kids" ] && kill $kids 2>/dev/null
    done
    i=0
    while [ $i -lt 100 ] && { kill -0 $PUB_PID 2>/dev/null || kill -0 $PRIV_PID 2>/dev/null; }; do
        sleep 0.1
        i=$((i + 1))
    done
    for side in proxy_public proxy_private; do
        echo
        echo "== $side: syscalls (all threads), calls per $UNIT_NAME over ${UNITS:-?} ${UNIT_NAME}s"
        awk -v units="${UNITS:-0}" '
            /^% time/ { print $0 "   per-unit"; next }
            /^-/ { print; next }
            NF >= 5 && $4 ~ /^[0-9]+$/ && units > 0 { printf "%s   %8.2f\n", $0, $4 / units; next }
            NF >= 5 && $5 ~ /^[0-9]+$/ && units > 0 && $NF == "total" { printf "%s   %8.2f\n", $0, $4 / units; next }
            { print }' "$OUT/strace.$side" >"$OUT/strace.$side.txt"
        sed -n "1,$((TOP + 2))p" "$OUT/strace.$side.txt"
        tail -n 1 "$OUT/strace.$side.txt"
    done
    echo
    echo "(strace -c -f slows every syscall, so the workload's own figures above are low;"
    echo " the counts per unit are what to compare between builds.)"
    exit 0
fi

# Dump each profile while the process is alive, then stop it (a dump at exit
# is written too if the proxy exits normally on SIGTERM).
for p in $PUB_PID $PRIV_PID; do
    callgrind_control -d "$p" >/dev/null 2>&1
done
sleep 1
kill $PRIV_PID $PUB_PID 2>/dev/null
i=0
while [ $i -lt 100 ] && { kill -0 $PUB_PID 2>/dev/null || kill -0 $PRIV_PID 2>/dev/null; }; do
    sleep 0.1
    i=$((i + 1))
done

for side in proxy_public proxy_private; do
    # Several dump files may exist (callgrind_control -d, then exit): take the
    # largest, which covers the transfer.
    f=$(ls -S "$OUT"/callgrind."$side"* 2>/dev/null | head -n 1)
    if [ -z "$f" ]; then
        echo "profile: no callgrind output for $side" >&2
        continue
    fi
    echo
    echo "== $side: top $TOP functions by own cost (instructions), $f"
    callgrind_annotate --inclusive=no "$f" 2>/dev/null >"$OUT/$side.self.txt"
    grep 'PROGRAM TOTALS' "$OUT/$side.self.txt"
    sed -n '/file:function/,$p' "$OUT/$side.self.txt" | sed -n "3,$((TOP + 2))p"
    echo
    echo "== $side: top $TOP by inclusive cost"
    callgrind_annotate --inclusive=yes "$f" 2>/dev/null >"$OUT/$side.inclusive.txt"
    sed -n '/file:function/,$p' "$OUT/$side.inclusive.txt" | sed -n "3,$((TOP + 2))p"
done
echo
echo "(callgrind counts user-space instructions only: time spent inside the kernel for"
echo " read/write/send/recv is not in these figures; a relay that makes many small"
echo " syscalls shows up as many calls to them, see the call counts with --tree=caller.)"
