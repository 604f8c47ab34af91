#!/bin/sh
# `make bench`: measures, in one run on this machine and on loopback only,
#   direct      a client talking straight to the app
#   plain       our tunnel without TLS
#   tls         our tunnel with TLS (once proxy_public has a TLS mode)
#   ssh         `ssh -R` through an unprivileged OpenSSH sshd (chacha20-poly1305)
# and prints a Markdown table (also saved to bench/results/latest.md).
#
# Bulk, ping-pong and connection rate run BENCH_ROUNDS (5) times, interleaved
# across the paths, and the table shows the median of the rounds (each round is
# listed under the table): the machine may be busy with other work.
# Knobs (environment): BENCH_ROUNDS (5), BENCH_BULK_SECONDS (3), BENCH_PINGPONG_ROUNDS
# (5000 per path and round; the paths take turns, BENCH_PINGPONG_CHUNK (250) round
# trips each), BENCH_CONNRATE_SECONDS (2), BENCH_HOLD (10000), BENCH_HOLD_INFLIGHT (128),
# BENCH_HOLD_SECONDS (120: give up opening after that; ssh -R needs ~60 s for 10,000
# on an idle 2-core machine, its per-channel cost grows with the channels open), BENCH_PATHS ("direct ssh plain tls tls_noresume cluster1 cluster3"),
# BENCH_TLS_PUB_ARGS / BENCH_TLS_PRIV_ARGS (extra flags for the TLS tunnel, e.g.
# a certificate or a pinned fingerprint, should the TLS mode need them),
# BENCH_PREV_BIN (a folder with an earlier build's proxy_public/proxy_private:
# adds the path tls_prev, the same TLS tunnel from those binaries, to compare a
# change with what it replaces in one run), BENCH_RESUME_RESETS (9),
# BENCH_ONLY (empty; "pingpong": only the ping-pong, BENCH_ROUNDS rounds, and a
# short report of each path's rounds, medians and, round by round, its ratio to
# ssh -R, printed and saved to bench/results/pingpong.md; latest.md is left as
# it is).
# Paths tls_noresume (TLS with --resume-grace 0 on both sides: resumption off,
# nothing retained) and tls_prev run the rounds but not the hold test.
# Cluster paths (docs/CLUSTER.md; on by default, skipped with a note when
# redis-server or, for cluster3, haproxy is missing), TLS like tls, rounds
# only (no hold, no UDP), in their own section of the report:
#   cluster1    one proxy_public node with --cluster (a redis-server started
#               here on a free port, no persistence) and one proxy_private:
#               against tls, it shows what cluster mode costs the data path
#   cluster3    nodes n1-n3 on 127.0.0.11-13 (one redis-server, node 1's
#               certificate) behind HAProxy running docs/haproxy-cluster.cfg
#               (roundrobin, PROXY v2 from 127.0.0.3, which the nodes accept),
#               the clients on HAProxy; the private is given node 1 only
# The default BENCH_PATHS is then "direct ssh plain tls tls_noresume cluster1
# cluster3" (plus tls_prev with BENCH_PREV_BIN).
# UDP (paths direct, plain, tls: ssh -R has none): 64-byte UDP ping-pong,
# iperf3 -u at BENCH_UDP_RATE (default: the highest of 400M 200M 100M 50M that
# the direct path carries without loss, found first), and the TCP bulk upload
# while BENCH_UDP_FLOOD_SIZE (1400) byte datagrams flood a UDP sink app of the
# same tunnel from one socket as fast as it sends: once with the flooding
# process under nice 19 (the target's figure: on a real server a flood costs
# the kernel's network receive, not a process competing with the relay for
# the same two cores) and once at the same priority as everything else.
# Logs of every process started are kept in build/bench/logs/.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

ROUNDS=${BENCH_ROUNDS:-5}
BULK_SECONDS=${BENCH_BULK_SECONDS:-3}
PP_ROUNDS=${BENCH_PINGPONG_ROUNDS:-5000}
PP_CHUNK=${BENCH_PINGPONG_CHUNK:-250}
CR_SECONDS=${BENCH_CONNRATE_SECONDS:-2}
CR_PARALLEL=8
HOLD_N=${BENCH_HOLD:-10000}
HOLD_INFLIGHT=${BENCH_HOLD_INFLIGHT:-128}
HOLD_SECONDS=${BENCH_HOLD_SECONDS:-120}
PREV_BIN=${BENCH_PREV_BIN:-}
if [ -n "$PREV_BIN" ]; then
    PATHS=${BENCH_PATHS:-direct ssh plain tls tls_noresume tls_prev cluster1 cluster3}
else
    PATHS=${BENCH_PATHS:-direct ssh plain tls tls_noresume cluster1 cluster3}
fi
HOLD_PATHS="direct ssh plain tls"
UDP_PATHS="direct plain tls"
UDP_RATE=${BENCH_UDP_RATE:-}
FLOOD_SIZE=${BENCH_UDP_FLOOD_SIZE:-1400}
RESUME_RESETS=${BENCH_RESUME_RESETS:-9}
ONLY=${BENCH_ONLY:-}
case $ONLY in
"" | pingpong) ;;
*) printf 'bench: BENCH_ONLY=%s is not known (there is only BENCH_ONLY=pingpong)\n' "$ONLY" >&2; exit 2 ;;
esac
TOKEN="bench-$$-token"
TB="$ROOT/build/bench/tcpbench"
LOGDIR="$ROOT/build/bench/logs"
RESULTS_DIR="$ROOT/bench/results"
START_TIME=$(date +%s)
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tunnel-bench.XXXXXX") || exit 1
PIDS=""
MADE_PRIVSEP_DIR=0

log() { printf 'bench: %s\n' "$*" >&2; }
note() { printf '%s\n' "$*" >>"$TMP/notes"; log "$*"; }
put() { printf '%s=%s\n' "$1" "$2" >>"$TMP/results"; }
rec() { printf '%s\n' "$3" >>"$TMP/v.$1.$2"; } # rec PATH METRIC VALUE: one round's figure
# median FMT: the median of the numbers on standard input, one a line: the
# middle one as it is, or the mean of the two middle ones printed with FMT.
median() {
    sort -n | awk -v fmt="$1" '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else printf fmt "\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# stop PID...: SIGTERM the processes and all their descendants, SIGKILL what is
# still there after 3 s. Only pids this script started (and their children).
stop() {
    [ $# -gt 0 ] || return 0
    _s_all=$("$TB" pids "$@" 2>/dev/null)
    [ -n "$_s_all" ] || return 0
    kill $_s_all 2>/dev/null
    _s_i=0 _s_alive=""
    while [ $_s_i -lt 30 ]; do
        _s_alive=""
        for _s_p in $_s_all; do kill -0 "$_s_p" 2>/dev/null && _s_alive="$_s_alive $_s_p"; done
        [ -z "$_s_alive" ] && break
        sleep 0.1
        _s_i=$((_s_i + 1))
    done
    [ -n "$_s_alive" ] && kill -9 $_s_alive 2>/dev/null
    for _s_p in "$@"; do wait "$_s_p" 2>/dev/null; done
    return 0
}

cleanup() {
    trap - EXIT INT TERM HUP
    exec 3>&- 2>/dev/null
    # shellcheck disable=SC2086
    [ -n "$PIDS" ] && stop $PIDS
    rm -rf "$TMP"
    [ "$MADE_PRIVSEP_DIR" = 1 ] && rmdir /run/sshd 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# spawn NAME CMD...: starts CMD in the background, output to LOGDIR/NAME.log;
# the pid is left in $SPAWNED.
spawn() {
    name=$1
    shift
    "$@" >"$LOGDIR/$name.log" 2>&1 &
    SPAWNED=$!
    PIDS="$PIDS $SPAWNED"
}

# forget PID...: drops stopped pids from the cleanup list.
forget() {
    keep=""
    for p in $PIDS; do
        drop=0
        for q in "$@"; do [ "$p" = "$q" ] && drop=1; done
        [ $drop = 0 ] && keep="$keep $p"
    done
    PIDS=$keep
}

tail_log() { # tail_log NAME: the end of a log, indented, for the notes
    [ -f "$LOGDIR/$1.log" ] && tail -n 5 "$LOGDIR/$1.log" | sed 's/^/    /'
}

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    log "missing $1 (Debian package $2)"
    MISSING="$MISSING $2"
}

# ------------------------------------------------------------------ setup
mkdir -p "$LOGDIR" "$RESULTS_DIR" || exit 1
rm -f "$LOGDIR"/*.log
: >"$TMP/results"
: >"$TMP/notes"

MISSING=""
need iperf3 iperf3
need ssh openssh-client
need ssh-keygen openssh-client
[ -x /usr/sbin/sshd ] || { log "missing /usr/sbin/sshd (Debian package openssh-server)"; MISSING="$MISSING openssh-server"; }
need curl curl
need cc gcc
if [ -n "$MISSING" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing:$MISSING"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $MISSING >"$LOGDIR/apt.log" 2>&1 ||
            { apt-get update >>"$LOGDIR/apt.log" 2>&1 &&
              DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $MISSING >>"$LOGDIR/apt.log" 2>&1; } ||
            { log "apt-get install failed, see $LOGDIR/apt.log"; exit 1; }
    else
        log "install them: apt-get install$MISSING"
        exit 1
    fi
fi

make -s -f bench/Makefile >"$LOGDIR/build.log" 2>&1 || { cat "$LOGDIR/build.log" >&2; exit 1; }

# File descriptors: every process that holds the connections needs HOLD_N + a few.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((HOLD_N + 200)) ]; then
    note "ulimit -n hard limit is $hard, below $((HOLD_N + 200)): the hold test may fail for lack of fds"
fi
ulimit -n "$hard" 2>/dev/null || ulimit -Sn "$hard" 2>/dev/null
note "ulimit -n is $(ulimit -n) for every process started here (hard limit $hard)"

# Pids: a thread-per-connection tunnel needs up to ~4 threads per held connection.
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$pid_max" -lt $((HOLD_N * 4 + 8000)) ]; then
    if [ "$(id -u)" = 0 ] && echo 4194304 >/proc/sys/kernel/pid_max 2>/dev/null; then
        note "raised kernel.pid_max from $pid_max to 4194304 (needed by thread-per-connection designs for $HOLD_N connections; left raised)"
    else
        note "kernel.pid_max is $pid_max (not root or not writable): a thread-per-connection tunnel may not hold $HOLD_N connections"
    fi
fi

# Does the tunnel exist, and does it speak TLS yet?
TUNNEL_OK=1
if [ ! -x ./proxy_public ] || [ ! -x ./proxy_private ]; then
    TUNNEL_OK=0
    note "proxy_public/proxy_private not built: tunnel rows skipped"
fi
HAS_TLS=0
if [ $TUNNEL_OK = 1 ] && ./proxy_public --help 2>&1 | grep -q -- '--insecure-plaintext'; then
    HAS_TLS=1
fi
HAS_UDP=0
if [ $TUNNEL_OK = 1 ] && ./proxy_private --help 2>&1 | grep -q -- '/udp'; then
    HAS_UDP=1
fi

# ------------------------------------------------------------------ the apps
spawn echo "$TB" echo-server 0
ECHO_PID=$SPAWNED
i=0
while [ $i -lt 50 ] && ! grep -q '^port=' "$LOGDIR/echo.log" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
ECHO_PORT=$(sed -n 's/^port=//p' "$LOGDIR/echo.log")
[ -n "$ECHO_PORT" ] || { log "echo server did not start"; exit 1; }

spawn udp-echo "$TB" udp-echo 0
i=0
while [ $i -lt 50 ] && ! grep -q '^port=' "$LOGDIR/udp-echo.log" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
UECHO_PORT=$(sed -n 's/^port=//p' "$LOGDIR/udp-echo.log")
spawn udp-sink "$TB" udp-echo 0 sink
i=0
while [ $i -lt 50 ] && ! grep -q '^port=' "$LOGDIR/udp-sink.log" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
USINK_PORT=$(sed -n 's/^port=//p' "$LOGDIR/udp-sink.log")
[ -n "$UECHO_PORT" ] && [ -n "$USINK_PORT" ] || { log "UDP echo/sink did not start"; exit 1; }

IPERF_PORT=$("$TB" freeport 1)
spawn iperf3-server iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
IPERF_PID=$SPAWNED
"$TB" waitport 127.0.0.1 "$IPERF_PORT" 10 || { log "iperf3 server did not start"; tail_log iperf3-server >&2; exit 1; }
log "apps: echo on 127.0.0.1:$ECHO_PORT, iperf3 on 127.0.0.1:$IPERF_PORT (TCP and UDP), UDP echo on $UECHO_PORT, UDP sink on $USINK_PORT"

# ------------------------------------------------------------------ measurements
# iperf_parse FILE: prints "BYTES MBITPS" of the receiver's sum, or nothing.
iperf_parse() {
    awk '/"sum_received"[ \t]*:/ { f = 1 }
         f && /"bytes"[ \t]*:/ { v = $0; sub(/.*:[ \t]*/, "", v); sub(/,.*/, "", v); b = v }
         f && /"bits_per_second"[ \t]*:/ { v = $0; sub(/.*:[ \t]*/, "", v); sub(/,.*/, "", v);
                                          printf "%.0f %.1f\n", b, v / 1e6; exit }' "$1"
}

# Every path that came up is recorded with `path_add PATH IPERF_PORT ECHO_PORT
# "PUBLIC_PIDS" "PRIVATE_PIDS"` (pid lists empty for direct). All paths stay up
# together and each figure is taken for every path back to back, so a change in
# the machine's load hits all paths alike rather than one of them.
ACTIVE=""
path_add() {
    ACTIVE="$ACTIVE $1"
    eval "IPORT_$1=\$2 EPORT_$1=\$3 PUB_$1=\"\$4\" PRIV_$1=\"\$5\""
}
path_get() { # path_get PATH: sets iport eport pub priv
    eval "iport=\$IPORT_$1 eport=\$EPORT_$1 pub=\"\$PUB_$1\" priv=\"\$PRIV_$1\""
}
# UDP ports of a path: udp_add PATH UDP_ECHO_PORT UDP_SINK_PORT; udp_get sets ueport usport
# (empty when the path has no UDP).
udp_add() { eval "UEPORT_$1=\$2 USPORT_$1=\$3"; }
udp_get() { eval "ueport=\${UEPORT_$1:-} usport=\${USPORT_$1:-}"; }
cpu_of() { "$TB" pstat "$@" | cut -d' ' -f1; }
rss_of() { "$TB" pstat "$@" | cut -d' ' -f2; }

# cpu_add VAR BEFORE PID...: adds to $VAR the CPU seconds the PIDs used since
# they had used BEFORE.
cpu_add() {
    v=$1 b=$2
    shift 2
    eval "cur=\${$v:-0}"
    eval "$v=$(echo "$cur $b $(cpu_of "$@")" | awk '{ printf "%.3f", $1 + $3 - $2 }')"
}

# bulk PATH DIR: one iperf3 run (DIR up = client→app, down = app→client);
# adds the bytes moved to BYTES_PATH and the relays' CPU during it to
# CPU_PUB_PATH / CPU_PRIV_PATH.
bulk() {
    path=$1 dir=$2
    path_get "$path"
    flag="" cpub=0 cpriv=0
    [ "$dir" = down ] && flag=-R
    [ -n "$pub" ] && cpub=$(cpu_of $pub)
    [ -n "$priv" ] && cpriv=$(cpu_of $priv)
    timeout $((BULK_SECONDS + 30)) iperf3 -c 127.0.0.1 -p "$iport" -t "$BULK_SECONDS" $flag -J \
        >"$LOGDIR/$path-iperf-$dir.json" 2>&1
    set -- $(iperf_parse "$LOGDIR/$path-iperf-$dir.json")
    if [ $# = 2 ]; then
        rec "$path" "bulk_$dir" "$2"
        eval "BYTES_$path=\$((BYTES_$path + $1))"
        [ -n "$pub" ] && cpu_add "CPU_PUB_$path" "$cpub" $pub
        [ -n "$priv" ] && cpu_add "CPU_PRIV_$path" "$cpriv" $priv
        log "$path: bulk $dir $2 Mbit/s"
    else
        note "$path: iperf3 $dir failed: $(grep '"error"' "$LOGDIR/$path-iperf-$dir.json" | head -1 | tr -s ' \t' ' ')"
    fi
}

# iperf_udp_parse FILE: prints "MBITPS LOST_PERCENT" of what the receiver got.
iperf_udp_parse() {
    awk '/"sum_received"[ \t]*:/ { f = 1 }
         f && /"bits_per_second"[ \t]*:/ { v = $0; sub(/.*:[ \t]*/, "", v); sub(/,.*/, "", v); b = v }
         f && /"lost_percent"[ \t]*:/ { v = $0; sub(/.*:[ \t]*/, "", v); sub(/,.*/, "", v);
                                        printf "%.1f %.3f\n", b / 1e6, v; exit }' "$1"
}

# udp_rate PATH RATE: one iperf3 -u run at RATE; prints "MBITPS LOST_PERCENT".
udp_rate() {
    path_get "$1"
    timeout $((BULK_SECONDS + 30)) iperf3 -c 127.0.0.1 -p "$iport" -u -b "$2" -l 1400 \
        -t "$BULK_SECONDS" -J >"$LOGDIR/$1-iperf-udp.json" 2>&1
    iperf_udp_parse "$LOGDIR/$1-iperf-udp.json"
}

udp_bulk() {
    path=$1
    set -- $(udp_rate "$path" "$UDP_RATE")
    if [ $# = 2 ]; then
        rec "$path" udp_mbit "$1"
        rec "$path" udp_loss "$2"
        log "$path: iperf3 -u at $UDP_RATE: $1 Mbit/s received, $2 % lost"
    else
        note "$path: iperf3 -u failed: $(grep '"error"' "$LOGDIR/$path-iperf-udp.json" | head -1 | tr -s ' \t' ' ')"
    fi
}

udp_pingpong() {
    path=$1
    udp_get "$path"
    out=$(timeout 120 "$TB" udp-pingpong 127.0.0.1 "$ueport" "$PP_ROUNDS" 64 2>>"$LOGDIR/$path-udp-pingpong.log")
    set -- $out
    if [ $# = 3 ]; then
        rec "$path" udp_p50 "$1"
        rec "$path" udp_p99 "$2"
        [ "$3" != 0 ] && note "$path: $3 UDP ping-pongs were lost and sent again"
        log "$path: UDP ping-pong p50 $1 us, p99 $2 us"
    else
        note "$path: UDP ping-pong failed: $(tail -n 1 "$LOGDIR/$path-udp-pingpong.log")"
    fi
}

# bulk_flood PATH nice|same: the TCP upload of bulk() while a UDP flood runs
# on the same path (the tunnel's, or the machine's for direct), the flooding
# process under nice 19 or not; rec bulk_flood (bulk_flood_same) and the
# flood's offered rate.
bulk_flood() {
    path=$1
    kind=$2
    sfx=""
    niceness=""
    if [ "$kind" = nice ]; then niceness="nice -n 19"; else sfx=_same; fi
    path_get "$path"
    udp_get "$path"
    $niceness "$TB" udp-flood 127.0.0.1 "$usport" $((BULK_SECONDS + 2)) "$FLOOD_SIZE" >"$TMP/flood.out" 2>"$LOGDIR/$path-flood$sfx.log" &
    fpid=$!
    PIDS="$PIDS $fpid"
    sleep 0.5
    timeout $((BULK_SECONDS + 30)) iperf3 -c 127.0.0.1 -p "$iport" -t "$BULK_SECONDS" -J \
        >"$LOGDIR/$path-iperf-flood$sfx.json" 2>&1
    wait $fpid
    forget $fpid
    set -- $(iperf_parse "$LOGDIR/$path-iperf-flood$sfx.json")
    if [ $# = 2 ]; then
        rec "$path" "bulk_flood$sfx" "$2"
        rec "$path" "flood_mbit$sfx" "$(awk -v n="$(cat "$TMP/flood.out")" -v s="$FLOOD_SIZE" -v t=$((BULK_SECONDS + 2)) \
            'BEGIN { printf "%.0f", n * s * 8 / t / 1e6 }')"
        log "$path: bulk up under a UDP flood ($kind priority) $2 Mbit/s (flood offered $(cat "$TMP/flood.out") datagrams)"
    else
        note "$path: iperf3 under the UDP flood ($kind priority) failed: $(grep '"error"' "$LOGDIR/$path-iperf-flood$sfx.json" | head -1 | tr -s ' \t' ' ')"
    fi
}

# pingpong_all: PP_ROUNDS round trips on every active path, measured together
# by one tcpbench: PP_CHUNK round trips on each path in turn, so that a busy
# moment of the machine falls on every path alike (path by path, whichever
# path ran while the machine was busy lost by 10-20 %, more than the paths
# differ by). The first round trip after each switch is not counted.
pingpong_all() {
    ports=""
    for p in $ACTIVE; do
        path_get "$p"
        ports="$ports $eport"
    done
    # shellcheck disable=SC2086
    timeout 600 "$TB" pingpong-mix 127.0.0.1 "$PP_ROUNDS" 64 "$PP_CHUNK" $ports \
        >"$TMP/pingpong.out" 2>>"$LOGDIR/pingpong.log"
    k=0
    for p in $ACTIVE; do
        k=$((k + 1))
        set -- $(sed -n "${k}p" "$TMP/pingpong.out")
        if [ $# = 2 ] && [ "$1" != - ]; then
            rec "$p" p50 "$1"
            rec "$p" p99 "$2"
            log "$p: ping-pong p50 $1 us, p99 $2 us"
        else
            path_get "$p"
            note "$p: ping-pong failed: $(grep -E "port ${eport}[,:]" "$LOGDIR/pingpong.log" | tail -n 1)"
        fi
    done
}

# pingpong_report: the answer of BENCH_ONLY=pingpong. Each path's rounds and
# their median, and each round's figure divided by the same round's figure of
# ssh -R (the paths took turns, so a round's figures saw the same machine):
# the median of those ratios and how many of them were above 1.
pingpong_report() {
    echo "| path | p50 µs, median (rounds) | p99 µs, median (rounds) | p50 / ssh -R, round by round: median, rounds > 1 | p99 / ssh -R, the same |"
    echo "|---|---|---|---|---|"
    for p in $ACTIVE; do
        line="| $p"
        ratios=""
        for m in p50 p99; do
            f="$TMP/v.$p.$m" s="$TMP/v.ssh.$m"
            [ -f "$f" ] || { line="$line | failed"; ratios="$ratios | —"; continue; }
            line="$line | $(median %.1f <"$f") ($(tr '\n' ' ' <"$f" | sed 's/ $//'))"
            if [ "$p" = ssh ] || [ ! -f "$s" ]; then
                ratios="$ratios | —"
            elif [ "$(wc -l <"$f")" != "$(wc -l <"$s")" ]; then
                ratios="$ratios | — (a round failed on one of the two: not paired)"
            else
                paste "$f" "$s" | awk '{ printf "%.6f\n", $1 / $2 }' >"$TMP/ratios"
                ratios="$ratios | $(printf '%.3f' "$(median %.6f <"$TMP/ratios")")×, $(awk '$1 > 1' "$TMP/ratios" | wc -l) of $(wc -l <"$TMP/ratios")"
            fi
        done
        echo "$line$ratios |"
    done
    echo
    echo "$ROUNDS rounds of $PP_ROUNDS round trips of 64 B per path, the paths in turns of $PP_CHUNK (BENCH_ONLY=pingpong sh bench/run.sh, BENCH_PATHS=\"$PATHS\"), $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -srm), nproc $(nproc), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    [ -f "$TMP/notes" ] && sed 's/^/- /' "$TMP/notes"
    return 0
}

connrate() {
    path=$1
    path_get "$path"
    out=$(timeout $((CR_SECONDS + 30)) "$TB" connrate 127.0.0.1 "$eport" "$CR_SECONDS" "$CR_PARALLEL" \
        2>>"$LOGDIR/$path-connrate.log")
    set -- $out
    if [ $# = 3 ]; then
        rec "$path" cps "$1"
        [ "$3" != 0 ] && note "$path: $3 of $(($2 + $3)) new connections failed"
        log "$path: $1 new connections/s ($2 ok, $3 failed)"
    else
        note "$path: connrate failed: $(tail -n 1 "$LOGDIR/$path-connrate.log")"
    fi
}

# hold PATH: HOLD_N concurrent connections, echo-checked when opened and again
# before they close; RSS growth of each side while they are held.
hold() {
    path=$1
    path_get "$path"
    [ -n "$pub" ] && rss_pub0=$(rss_of $pub)
    [ -n "$priv" ] && rss_priv0=$(rss_of $priv)
    rm -f "$TMP/holdin" "$TMP/hold.out"
    mkfifo "$TMP/holdin" || exit 1
    "$TB" hold 127.0.0.1 "$eport" "$HOLD_N" "$HOLD_INFLIGHT" "$HOLD_SECONDS" <"$TMP/holdin" >"$TMP/hold.out" 2>"$LOGDIR/$path-hold.log" &
    hold_pid=$!
    PIDS="$PIDS $hold_pid"
    exec 3>"$TMP/holdin"
    t0=$(date +%s)
    i=0
    while [ $i -lt $((HOLD_SECONDS * 10 + 300)) ] && ! grep -q '^held=' "$TMP/hold.out" && kill -0 $hold_pid 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
    held=$(sed -n 's/^held=\([0-9]*\).*/\1/p' "$TMP/hold.out")
    if [ -n "$held" ]; then
        log "$path: $held of $HOLD_N connections held after $(($(date +%s) - t0)) s"
        put "$path.held" "$held"
        put "$path.hold_s" "$(($(date +%s) - t0))"
        put "$path.hold_first10" "$(sed -n 's/^held=.* first10=\([0-9]*\).*/\1/p' "$TMP/hold.out")"
        put "$path.hold_last10" "$(sed -n 's/^held=.* last10=\([0-9]*\).*/\1/p' "$TMP/hold.out")"
        if [ "$held" -gt 0 ]; then
            [ -n "$pub" ] && put "$path.rss_pub" "$(echo "$rss_pub0 $(rss_of $pub) $held" |
                awk '{ printf "%.1f", ($2 - $1) / $3 }')"
            [ -n "$priv" ] && put "$path.rss_priv" "$(echo "$rss_priv0 $(rss_of $priv) $held" |
                awk '{ printf "%.1f", ($2 - $1) / $3 }')"
        fi
    else
        note "$path: hold test gave no answer: $(tail -n 1 "$LOGDIR/$path-hold.log")"
    fi
    exec 3>&-
    i=0
    while [ $i -lt 600 ] && ! grep -q '^alive=' "$TMP/hold.out" && kill -0 $hold_pid 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
    alive=$(sed -n 's/^alive=\([0-9]*\).*/\1/p' "$TMP/hold.out")
    [ -n "$alive" ] && put "$path.alive" "$alive"
    [ -n "$held" ] && [ "$held" != "$HOLD_N" ] && note "$path: only $held of $HOLD_N connections held: $(tail -n 1 "$LOGDIR/$path-hold.log" | sed 's/^tcpbench: hold: //') (limit ${HOLD_SECONDS} s)"
    [ -n "$held" ] && [ -n "$alive" ] && [ "$alive" != "$held" ] && note "$path: $alive of $held held connections still echoed at the end"
    stop $hold_pid
    forget $hold_pid
    rm -f "$TMP/holdin"
}

# ------------------------------------------------------------------ ssh -R
run_ssh() {
    d="$TMP/ssh"
    mkdir -p "$d" && chmod 700 "$d"
    ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$d/host_key" || return 1
    ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$d/client_key" || return 1
    cp "$d/client_key.pub" "$d/authorized_keys"
    set -- $("$TB" freeport 3)
    sshd_port=$1 fwd_iperf=$2 fwd_echo=$3
    cat >"$d/sshd_config" <<EOF
# Private sshd for the benchmark: loopback only, its own key files, no PAM.
Port $sshd_port
ListenAddress 127.0.0.1
HostKey $d/host_key
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding remote
GatewayPorts no
X11Forwarding no
PermitTTY no
UseDNS no
Subsystem sftp /bin/false
LogLevel ERROR
EOF
    # As root, sshd insists on its privilege separation directory even with its own config.
    if [ "$(id -u)" = 0 ] && [ ! -d /run/sshd ]; then
        mkdir -m 0755 /run/sshd && MADE_PRIVSEP_DIR=1
    fi
    /usr/sbin/sshd -t -f "$d/sshd_config" >"$LOGDIR/sshd-config.log" 2>&1 ||
        { note "ssh: sshd rejects its config: $(tail -n 1 "$LOGDIR/sshd-config.log")"; return 1; }
    spawn sshd /usr/sbin/sshd -D -e -f "$d/sshd_config" -o "PidFile=$d/sshd.pid"
    sshd_pid=$SPAWNED
    "$TB" waitport 127.0.0.1 "$sshd_port" 10 || { note "ssh: sshd did not listen"; tail_log sshd >>"$TMP/notes"; return 1; }
    spawn ssh ssh -F /dev/null -N -T \
        -R "$fwd_iperf:127.0.0.1:$IPERF_PORT" -R "$fwd_echo:127.0.0.1:$ECHO_PORT" \
        -i "$d/client_key" -p "$sshd_port" -l "$(id -un)" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
        -o ExitOnForwardFailure=yes -o Ciphers=chacha20-poly1305@openssh.com \
        -o ServerAliveInterval=0 -o LogLevel=ERROR 127.0.0.1
    ssh_pid=$SPAWNED
    if ! "$TB" waitport 127.0.0.1 "$fwd_echo" 15 || ! "$TB" waitport 127.0.0.1 "$fwd_iperf" 5; then
        note "ssh: forwarded ports never opened"
        tail_log ssh >>"$TMP/notes"
        stop $ssh_pid $sshd_pid
        forget $ssh_pid $sshd_pid
        return 1
    fi
    cipher=$(ssh -F /dev/null -Q cipher | grep -c chacha20-poly1305)
    [ "$cipher" -ge 1 ] || note "ssh: this OpenSSH has no chacha20-poly1305"
    path_add ssh "$fwd_iperf" "$fwd_echo" "$sshd_pid" "$ssh_pid"
}

# ------------------------------------------------------------------ tunnel
# run_tunnel MODE: MODE is plain or tls. With a TLS-capable build, plaintext
# needs --insecure-plaintext on both sides; before that, plain is the only mode.
run_tunnel() {
    mode=$1
    bin=.
    pub_extra="" priv_extra=""
    if [ "$mode" = plain ] && [ $HAS_TLS = 1 ]; then
        pub_extra="--insecure-plaintext" priv_extra="--insecure-plaintext"
    fi
    case $mode in tls_prev) bin=$PREV_BIN ;; esac
    if [ "$mode" != plain ]; then
        pub_extra=${BENCH_TLS_PUB_ARGS:-} priv_extra=${BENCH_TLS_PRIV_ARGS:-}
        if [ "$mode" = tls_noresume ]; then
            pub_extra="--resume-grace 0 $pub_extra" priv_extra="--resume-grace 0 $priv_extra"
        fi
        # Trust on first use as a user would, but never in the user's own known-hosts file.
        ./proxy_private --help 2>&1 | grep -q -- '--known-hosts' &&
            priv_extra="--known-hosts $TMP/known_hosts-$mode $priv_extra"
    fi
    # Listen on loopback only when the build lets us say so (same code path).
    ./proxy_public --help 2>&1 | grep -q -- '--bind' && pub_extra="--bind 127.0.0.1 $pub_extra"
    state="$TMP/state-$mode"
    mkdir -p "$state"
    set -- $("$TB" freeport 6)
    tport=$1 wport=$2 pub_iperf=$3 pub_echo=$4 pub_uecho=$5 pub_usink=$6
    udp_regs=""
    if [ "$mode" != tls_prev ] && [ $HAS_UDP = 1 ]; then
        # iperf3 -u talks TCP (control) and UDP on one port: both apps on pub_iperf.
        udp_regs="--register bench-iperf-udp:$pub_iperf:127.0.0.1:$IPERF_PORT/udp
            --register bench-udp-echo:$pub_uecho:127.0.0.1:$UECHO_PORT/udp
            --register bench-udp-sink:$pub_usink:127.0.0.1:$USINK_PORT/udp"
    fi
    # shellcheck disable=SC2086
    spawn "$mode-proxy_public" "$bin/proxy_public" "$tport" "$wport" --token "$TOKEN" --state-dir "$state" $pub_extra
    pub_pid=$SPAWNED
    if ! "$TB" waitport 127.0.0.1 "$tport" 10; then
        note "$mode: proxy_public did not listen on $tport"
        tail_log "$mode-proxy_public" >>"$TMP/notes"
        stop $pub_pid
        forget $pub_pid
        return 1
    fi
    # shellcheck disable=SC2086
    spawn "$mode-proxy_private" "$bin/proxy_private" 127.0.0.1 "$tport" --token "$TOKEN" --name bench \
        --register "bench-iperf:$pub_iperf:127.0.0.1:$IPERF_PORT" \
        --register "bench-echo:$pub_echo:127.0.0.1:$ECHO_PORT" $udp_regs $priv_extra
    priv_pid=$SPAWNED
    # Bounded wait until /list shows both apps online.
    i=0 ok=0
    while [ $i -lt 100 ] && kill -0 $pub_pid 2>/dev/null && kill -0 $priv_pid 2>/dev/null; do
        curl -s -m 2 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$wport/list" >"$TMP/list.json" 2>/dev/null
        n=$(tr -d ' \t\r\n' <"$TMP/list.json" | tr '}' '\n' |
            grep -E '"name":"bench-(iperf|echo)"' | grep -c '"online":true')
        [ "$n" = 2 ] && { ok=1; break; }
        sleep 0.2
        i=$((i + 1))
    done
    if [ $ok != 1 ]; then
        note "$mode: apps not online in /list within 20 s; last answer: $(head -c 300 "$TMP/list.json")"
        tail_log "$mode-proxy_public" >>"$TMP/notes"
        tail_log "$mode-proxy_private" >>"$TMP/notes"
        stop $priv_pid $pub_pid
        forget $priv_pid $pub_pid
        return 1
    fi
    path_add "$mode" "$pub_iperf" "$pub_echo" "$pub_pid" "$priv_pid"
    [ -n "$udp_regs" ] && udp_add "$mode" "$pub_uecho" "$pub_usink"
    eval "WPORT_$mode=\$wport"
}

# ------------------------------------------------------------------ cluster
# The cluster paths (docs/CLUSTER.md), both TLS like the tls path, both fed by
# one proxy_private given node 1 only (it learns the others from NODES) with
# the same --register apps, TCP only (HAProxy carries no UDP).
# cluster1: one node on 127.0.0.1 with --cluster (its own redis-server);
# cluster3: nodes n1-n3 on 127.0.0.11-13 (one redis-server, one certificate:
# node 1's, copied by --cert/--key) behind HAProxy running
# docs/haproxy-cluster.cfg as shipped (roundrobin, send-proxy-v2 from
# 127.0.0.3, which the nodes --accept-proxy-from), the bench's clients on
# HAProxy's 127.0.0.1 side.
CLUSTER_BALANCER=127.0.0.3

# redis_start NAME: a redis-server on a free loopback port, no persistence;
# sets REDIS_PORT and REDIS_PID.
redis_start() {
    REDIS_PORT=$("$TB" freeport 1)
    mkdir -p "$TMP/$1"
    spawn "$1" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$TMP/$1" \
        --save "" --appendonly no --protected-mode no --daemonize no
    REDIS_PID=$SPAWNED
    "$TB" waitport 127.0.0.1 "$REDIS_PORT" 10 || { note "$1: redis-server did not listen"; tail_log "$1" >>"$TMP/notes"; return 1; }
}

# apps_online ADDR WPORT: /list on that node shows bench-iperf and bench-echo online.
apps_online() {
    curl -s -m 2 -H "Authorization: Bearer $TOKEN" "http://$1:$2/list" >"$TMP/list.json" 2>/dev/null
    python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
on = [a["name"] for a in d.get("apps", []) if a.get("online") is True]
sys.exit(0 if "bench-iperf" in on and "bench-echo" in on else 1)' "$TMP/list.json" 2>/dev/null
}

# run_cluster 1|3
run_cluster() {
    n=$1
    mode=cluster$n
    redis_start "$mode-redis" || return 1
    rpid=$REDIS_PID
    url="redis://127.0.0.1:$REDIS_PORT/0"
    if [ "$n" = 1 ]; then addrs=127.0.0.1; else addrs="127.0.0.11 127.0.0.12 127.0.0.13"; fi
    set -- $("$TB" freeport 4)
    tport=$1 wport=$2 pub_iperf=$3 pub_echo=$4
    pids="" cert_args="" k=0 addr1=""
    for a in $addrs; do
        k=$((k + 1))
        state="$TMP/state-$mode-n$k"
        mkdir -p "$state" && chmod 700 "$state"
        extra=""
        [ "$n" = 3 ] && extra="--accept-proxy-from $CLUSTER_BALANCER/32"
        # shellcheck disable=SC2086
        spawn "$mode-n$k-proxy_public" ./proxy_public "$tport" "$wport" --bind "$a" --token "$TOKEN" \
            --state-dir "$state" --cluster "$url" --node-name "n$k" --advertise "$a:$tport" \
            $cert_args $extra ${BENCH_TLS_PUB_ARGS:-}
        pids="$pids $SPAWNED"
        if ! "$TB" waitport "$a" "$tport" 10; then
            note "$mode: node n$k did not listen on $a:$tport"
            tail_log "$mode-n$k-proxy_public" >>"$TMP/notes"
            stop $pids $rpid
            forget $pids $rpid
            return 1
        fi
        if [ $k = 1 ]; then
            addr1=$a
            # Nodes 2 and 3 share node 1's certificate (a private trusts the others by it).
            [ -z "${BENCH_TLS_PUB_ARGS:-}" ] && cert_args="--cert $state/tls.crt --key $state/tls.key"
        fi
    done
    # shellcheck disable=SC2086
    spawn "$mode-proxy_private" ./proxy_private "$addr1" "$tport" --token "$TOKEN" --name bench \
        --register "bench-iperf:$pub_iperf:127.0.0.1:$IPERF_PORT" \
        --register "bench-echo:$pub_echo:127.0.0.1:$ECHO_PORT" \
        --known-hosts "$TMP/known_hosts-$mode" ${BENCH_TLS_PRIV_ARGS:-}
    priv_pid=$SPAWNED
    # Bounded wait until every node shows both apps online and listens on them.
    i=0 ok=0
    while [ $i -lt 150 ] && kill -0 $priv_pid 2>/dev/null; do
        ok=1
        for a in $addrs; do
            apps_online "$a" "$wport" && "$TB" waitport "$a" "$pub_echo" 1 && "$TB" waitport "$a" "$pub_iperf" 1 || { ok=0; break; }
        done
        [ $ok = 1 ] && break
        sleep 0.2
        i=$((i + 1))
    done
    if [ $ok != 1 ]; then
        note "$mode: apps not online on every node within 30 s; last /list: $(head -c 300 "$TMP/list.json")"
        for k in $(seq "$n"); do tail_log "$mode-n$k-proxy_public" >>"$TMP/notes"; done
        tail_log "$mode-proxy_private" >>"$TMP/notes"
        stop $priv_pid $pids $rpid
        forget $priv_pid $pids $rpid
        return 1
    fi
    if [ "$n" = 3 ]; then
        # HAProxy with the shipped configuration, its example values replaced
        # through the environment (presetenv): front 127.0.0.1 on the two app ports.
        hweb=$("$TB" freeport 1)
        set -- 127.0.0.11 127.0.0.12 127.0.0.13
        if ! env FRONT_ADDR=127.0.0.1 APP_PORTS="$pub_iperf,127.0.0.1:$pub_echo" WEB_PORT="$wport" \
            FRONT_WEB_PORT="$hweb" NODE1=$1 NODE2=$2 NODE3=$3 BALANCER_SOURCE=$CLUSTER_BALANCER \
            MAXCONN=4000 haproxy -c -f docs/haproxy-cluster.cfg >"$LOGDIR/$mode-haproxy-check.log" 2>&1; then
            note "$mode: haproxy -c rejects docs/haproxy-cluster.cfg: $(tail -n 1 "$LOGDIR/$mode-haproxy-check.log")"
            stop $priv_pid $pids $rpid
            forget $priv_pid $pids $rpid
            return 1
        fi
        spawn "$mode-haproxy" env FRONT_ADDR=127.0.0.1 APP_PORTS="$pub_iperf,127.0.0.1:$pub_echo" WEB_PORT="$wport" \
            FRONT_WEB_PORT="$hweb" NODE1=$1 NODE2=$2 NODE3=$3 BALANCER_SOURCE=$CLUSTER_BALANCER \
            MAXCONN=4000 haproxy -db -f docs/haproxy-cluster.cfg
        hpid=$SPAWNED
        # Up when a round of echoes through it (one per node, roundrobin) works.
        i=0 ok=0
        while [ $i -lt 50 ] && kill -0 $hpid 2>/dev/null; do
            if "$TB" waitport 127.0.0.1 "$pub_echo" 1 &&
                timeout 10 "$TB" pingpong 127.0.0.1 "$pub_echo" 10 64 >/dev/null 2>&1 &&
                timeout 10 "$TB" pingpong 127.0.0.1 "$pub_echo" 10 64 >/dev/null 2>&1 &&
                timeout 10 "$TB" pingpong 127.0.0.1 "$pub_echo" 10 64 >/dev/null 2>&1; then
                ok=1
                break
            fi
            sleep 0.2
            i=$((i + 1))
        done
        if [ $ok != 1 ]; then
            note "$mode: no echo through HAProxy within 10 s"
            tail_log "$mode-haproxy" >>"$TMP/notes"
            stop $hpid $priv_pid $pids $rpid
            forget $hpid $priv_pid $pids $rpid
            return 1
        fi
        pids="$pids $hpid"
    fi
    # Redis is not a relay (the data path never touches it): stopped at the end
    # with everything else, not counted in the public side's CPU.
    path_add "$mode" "$pub_iperf" "$pub_echo" "$pids" "$priv_pid"
    eval "WPORT_$mode=\$wport"
}

HAS_CLUSTER=0
if [ $TUNNEL_OK = 1 ] && [ $HAS_TLS = 1 ] && ./proxy_public --help 2>&1 | grep -q -- '--cluster'; then
    HAS_CLUSTER=1
fi
cluster_skip() { # cluster_skip PATH: why it cannot run here, or nothing
    if [ $HAS_CLUSTER = 0 ]; then echo "no --cluster in this build"
    elif ! command -v redis-server >/dev/null 2>&1; then echo "no redis-server (Debian package redis-server)"
    elif [ "$1" = cluster3 ] && ! command -v haproxy >/dev/null 2>&1; then echo "no haproxy (Debian package haproxy)"
    elif ! command -v python3 >/dev/null 2>&1; then echo "no python3"
    fi
}

# ------------------------------------------------------------------ run
for p in $PATHS; do
    case $p in
    direct) path_add direct "$IPERF_PORT" "$ECHO_PORT" "" ""; udp_add direct "$UECHO_PORT" "$USINK_PORT" ;;
    ssh) run_ssh || put ssh.status "failed to start" ;;
    plain)
        if [ $TUNNEL_OK = 1 ]; then run_tunnel plain || put plain.status "failed to start"
        else put plain.status "not built"; fi ;;
    tls)
        if [ $TUNNEL_OK = 0 ]; then put tls.status "not built"
        elif [ $HAS_TLS = 0 ]; then put tls.status "no TLS mode yet"
        else run_tunnel tls || put tls.status "failed to start"; fi ;;
    tls_noresume)
        if [ $TUNNEL_OK = 1 ] && [ $HAS_TLS = 1 ]; then run_tunnel tls_noresume || put tls_noresume.status "failed to start"
        else put tls_noresume.status "not built"; fi ;;
    tls_prev)
        if [ -x "$PREV_BIN/proxy_public" ] && [ -x "$PREV_BIN/proxy_private" ]; then
            run_tunnel tls_prev || put tls_prev.status "failed to start"
        else put tls_prev.status "no build in BENCH_PREV_BIN"; fi ;;
    cluster1 | cluster3)
        why=$(cluster_skip "$p")
        if [ -n "$why" ]; then put "$p.status" "skipped: $why"; note "$p: skipped: $why"
        else run_cluster "${p#cluster}" || put "$p.status" "failed to start"; fi ;;
    *) log "unknown path $p" ;;
    esac
done
log "paths up:$ACTIVE"

for p in $ACTIVE; do
    path_get "$p"
    eval "BYTES_$p=0 CPU_PUB_$p=0 CPU_PRIV_$p=0"
    # cluster3: each node's and HAProxy's own CPU, to see the work spread.
    if [ "$p" = cluster3 ]; then
        for q in $pub; do eval "CPU0_ONE_$q=\$(cpu_of $q)"; done
    fi
done
if [ "$ONLY" = pingpong ]; then
    r=1
    while [ $r -le "$ROUNDS" ]; do
        log "round $r of $ROUNDS"
        pingpong_all
        r=$((r + 1))
    done
    # shellcheck disable=SC2086
    stop $PIDS
    PIDS=""
    pingpong_report >"$TMP/pingpong.md"
    cat "$TMP/pingpong.md"
    cp "$TMP/pingpong.md" "$RESULTS_DIR/pingpong.md"
    log "saved bench/results/pingpong.md; logs in build/bench/logs/"
    exit 0
fi
# The UDP paths up, and the offered load for iperf3 -u: the highest rate the
# direct path carries without loss here (unless BENCH_UDP_RATE says).
UDP_ACTIVE=""
for p in $ACTIVE; do
    udp_get "$p"
    case " $UDP_PATHS " in *" $p "*) [ -n "$ueport" ] && UDP_ACTIVE="$UDP_ACTIVE $p" ;; esac
done
if [ -z "$UDP_RATE" ] && [ -n "$UDP_ACTIVE" ]; then
    for rate in 400M 200M 100M 50M; do
        UDP_RATE=$rate
        set -- $(udp_rate direct "$rate")
        [ $# = 2 ] && [ "$2" = 0.000 ] && break
        log "direct loses $2 % at $rate"
    done
    log "UDP offered load: $UDP_RATE"
fi
put udp.rate "$UDP_RATE"
r=1
while [ $r -le "$ROUNDS" ]; do
    log "round $r of $ROUNDS"
    for dir in up down; do
        for p in $ACTIVE; do bulk "$p" $dir; done
    done
    pingpong_all
    for p in $ACTIVE; do connrate "$p"; done
    for p in $UDP_ACTIVE; do udp_pingpong "$p"; done
    for p in $UDP_ACTIVE; do udp_bulk "$p"; done
    for p in $UDP_ACTIVE; do bulk_flood "$p" nice; done
    for p in $UDP_ACTIVE; do bulk_flood "$p" same; done
    r=$((r + 1))
done
# What the tunnels dropped of the floods (their /list), for the notes.
for p in $UDP_ACTIVE; do
    eval "w=\${WPORT_$p:-}"
    [ -n "$w" ] || continue
    d=$(curl -s -m 2 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$w/list" | tr -d ' \n' |
        sed -n 's/.*"name":"bench-udp-sink"[^}]*"datagrams_in":\([0-9]*\)[^}]*"drops":{\([^}]*\)}.*/in=\1 \2/p')
    [ -n "$d" ] && put "$p.flood_drops" "$d"
done
# The median of the rounds goes in the table; every round is listed too.
for f in "$TMP"/v.*; do
    [ -f "$f" ] || continue
    key=${f#"$TMP"/v.}
    put "$key" "$(median %.1f <"$f")"
    put "$key.rounds" "$(tr '\n' ' ' <"$f" | sed 's/ $//')"
done
# CPU per GiB: the relays' CPU during the path's bulk transfers only.
for p in $ACTIVE; do
    path_get "$p"
    eval "bytes=\$BYTES_$p cpub=\$CPU_PUB_$p cpriv=\$CPU_PRIV_$p"
    [ "$bytes" -gt 0 ] || continue
    [ -n "$pub" ] && put "$p.cpu_pub" "$(echo "$cpub $bytes" | awk '{ printf "%.3f", $1 / ($2 / 1073741824) }')"
    [ -n "$priv" ] && put "$p.cpu_priv" "$(echo "$cpriv $bytes" | awk '{ printf "%.3f", $1 / ($2 / 1073741824) }')"
done
case " $ACTIVE " in *" cluster3 "*)
    path_get cluster3
    split="" k=0
    for q in $pub; do
        k=$((k + 1))
        if [ $k -le 3 ]; then who=n$k; else who=haproxy; fi
        eval "c0=\$CPU0_ONE_$q"
        split="$split${split:+, }$who $(echo "$c0 $(cpu_of $q)" | awk '{ printf "%.1f", $2 - $1 }') s"
    done
    put cluster3.cpu_split "$split" ;;
esac
# Outages: a reset of the tunnel's connection, and a silent cut, while a
# connection is open: the time until it carries a byte again.
if [ $TUNNEL_OK = 1 ] && [ $HAS_TLS = 1 ] && ./proxy_public --help 2>&1 | grep -q -- '--resume-grace'; then
    out=$(timeout 200 /usr/bin/env python3 bench/resume_probe.py . "$ECHO_PORT" "$RESUME_RESETS" 17 \
        2>"$LOGDIR/resume-probe.log")
    case "$out" in
    *ok=1*)
        for kv in $out; do put "resume.${kv%%=*}" "${kv#*=}"; done
        log "resume: $out" ;;
    *) note "resume probe failed: $out $(tail -n 1 "$LOGDIR/resume-probe.log")" ;;
    esac
fi

for p in $ACTIVE; do
    case " $HOLD_PATHS " in *" $p "*) hold "$p" ;; esac
done

# A relay that died during the run is worth knowing about.
for p in $ACTIVE; do
    path_get "$p"
    for q in $pub $priv; do
        kill -0 "$q" 2>/dev/null || note "$p: relay process $q died during the run; see build/bench/logs/"
    done
done

# shellcheck disable=SC2086
stop $PIDS
PIDS=""

# A busy machine makes every figure noisy; say so (the ratios of one run are
# still fairer than figures from different runs).
awk -v a="$LOAD0" -v b="$(cut -d' ' -f1 /proc/loadavg)" -v n="$(nproc)" 'BEGIN { split(a, x, " ");
    if (x[1] > n || b > n) exit 0; exit 1 }' &&
    note "the machine was busy with other work (load average $(echo "$LOAD0" | cut -d' ' -f1) at start, $(cut -d' ' -f1 /proc/loadavg) at end, on $(nproc) cores): figures are noisy, compare the rounds"

if [ $HAS_TLS = 1 ]; then plain_label="tunnel, plaintext (--insecure-plaintext)"
else plain_label="tunnel, plaintext (only mode today)"; fi
awk -v date="$(date -u '+%Y-%m-%d %H:%M:%S UTC')" -v nproc="$(nproc)" \
    -v cmd="make bench (sh bench/run.sh; median of $ROUNDS interleaved rounds of: iperf3 ${BULK_SECONDS} s each way, ${PP_ROUNDS} ping-pongs per path (the paths in turns of ${PP_CHUNK}), connrate ${CR_SECONDS} s x ${CR_PARALLEL}; then hold ${HOLD_N})" \
    -v host="$(uname -srm)" -v load0="$LOAD0" -v load="$(cut -d" " -f1-3 /proc/loadavg)" -v elapsed=$(($(date +%s) - START_TIME)) \
    -v hold_n="$HOLD_N" -v plain_label="$plain_label" -v notes_file="$TMP/notes" \
    -v flood_size_note="$FLOOD_SIZE B datagrams from one socket, flat out" \
    -f bench/report.awk "$TMP/results" >"$TMP/latest.md"
cat "$TMP/latest.md"
cp "$TMP/latest.md" "$RESULTS_DIR/latest.md"
log "saved bench/results/latest.md; logs in build/bench/logs/"
