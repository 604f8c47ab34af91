#!/bin/sh
# Link cut behind a real NAT (network namespaces; only RFC 5737 addresses).
#
#   pub  (203.0.113.10)              proxy_public; curl as the outside client
#   rtr  (203.0.113.2 / 192.0.2.1)   masquerades home -> pub
#   home (192.0.2.2)                 proxy_private and a web server
#
# Once the tunnel is up, an nft rule in rtr's forward chain drops the tunnel's
# packets silently (no RST, no ICMP: like a dead link or a NAT that forgot the
# mapping), for longer than the resume grace (5 s here; tests/nat_resume.py has
# the cuts that are resumed). Checks:
#   - the dead tunnel is detected: the public's /list shows the private offline
#     (suspended, then gone) and the private logs ev=tunnel_down once the grace
#     is over (bounded waits, ~10-15 s of silence by design, plus the grace);
#   - no pile-up while the link is down, although clients keep trying the public
#     port: threads and VmRSS of both processes sampled from /proc every second;
#   - the rule is deleted and the service comes back by itself (curl through the
#     public port), then threads go back near the baseline;
#   - both programs still exit 0 on SIGTERM.
# Needs root, ip, nft and curl; without root it prints SKIPPED and exits 0.
# Environment: BIN_DIR (default: repo top), PROXY_EXTRA_ARGS (both programs),
#   LINKCUT_SECONDS (how long the link stays cut, default 40).
set -u

cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
BIN_DIR=${BIN_DIR:-$REPO}
EXTRA=${PROXY_EXTRA_ARGS:-}
CUT_SECONDS=${LINKCUT_SECONDS:-40}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIPPED: nat_linkcut needs root (network namespaces, nft)"
    exit 0
fi
for t in ip nft curl; do
    command -v "$t" >/dev/null 2>&1 || { echo "SKIPPED: nat_linkcut needs $t"; exit 0; }
done
for b in proxy_public proxy_private; do
    [ -x "$BIN_DIR/$b" ] || { echo "FAIL: $BIN_DIR/$b missing (run make)"; exit 1; }
done

ID=lc$$
NS_PUB=${ID}pub
NS_RTR=${ID}rtr
NS_HOME=${ID}home
TMP=$(mktemp -d /tmp/linkcut.XXXXXX)
OUT=${NAT_OUT:-$REPO/tests/out/${TEST_RUN:-linkcut-$(date +%Y%m%d-%H%M%S)}}/nat_linkcut
mkdir -p "$OUT"
PIDS=""
TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
MARK=page-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
TUNNEL=6310
WEB=6311
APP=8081
HTTP=8001

. tests/netns_lib.sh  # (the script has cd-ed to the repository)
trap netns_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "FAIL: $*"
    for f in "$OUT"/*.log; do
        [ -f "$f" ] || continue
        echo "--- $f (tail)"
        grep -v 'ev=conn_closed\|ev=client_connected' "$f" | tail -n 25
    done
    exit 1
}

step() { echo "nat_linkcut: $*"; }
now() { cut -d' ' -f1 /proc/uptime | cut -d. -f1; }

# ---- the network (as in docs: home behind a masquerading router)
step "namespaces $NS_PUB $NS_RTR $NS_HOME"
netns_make_nat

# ---- web server at home
netns_start_home_web

# ---- proxies
# shellcheck disable=SC2086 # EXTRA is a list of words
ip netns exec "$NS_PUB" "$BIN_DIR/proxy_public" $TUNNEL $WEB --bind 203.0.113.10 --token "$TOKEN" \
    --state-dir "$TMP/state" --log-level debug --resume-grace 5 $EXTRA >"$OUT/public.log" 2>&1 &
PUB_PID=$!
PIDS="$PIDS $PUB_PID"
list() {
    in_pub curl -s --max-time 5 -H "Authorization: Bearer $TOKEN" "http://203.0.113.10:$WEB/list"
}
i=0
until list >/dev/null; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "public web API did not come up"
    kill -0 $PUB_PID 2>/dev/null || fail "proxy_public exited"
    sleep 0.1
done
# shellcheck disable=SC2086
ip netns exec "$NS_HOME" "$BIN_DIR/proxy_private" 203.0.113.10 $TUNNEL --token "$TOKEN" --name home \
    --register "web:$APP:192.0.2.2:$HTTP" --known-hosts "$TMP/known_hosts" --log-level debug \
    --resume-grace 5 $EXTRA >"$OUT/private.log" 2>&1 &
PRIV_PID=$!
PIDS="$PIDS $PRIV_PID"

# online STATE: 0 when /list says the private "home" is online (STATE=true) or
# offline (STATE=false).
online_is() {
    list | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
p = [x for x in d["privates"] if x["name"] == "home"]
a = [x for x in d["apps"] if x["name"] == "web"]
want = sys.argv[1] == "true"
if want:
    ok = p and p[0]["online"] is True and a and a[0]["online"] is True
else:
    ok = p and p[0]["online"] is False
sys.exit(0 if ok else 1)
' "$1"
}
fetch() {
    body=$(in_pub curl -s --max-time "${1:-10}" "http://203.0.113.10:$APP/index.html") || return 1
    case "$body" in *"$MARK"*) return 0 ;; esac
    return 1
}
stat_of() { # pid -> "threads rss_kib"
    awk '/^Threads:/ {t=$2} /^VmRSS:/ {r=$2} END {print t, r}' "/proc/$1/status" 2>/dev/null
}

i=0
until online_is true 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || { list; echo; fail "private/app not online"; }
    kill -0 $PRIV_PID 2>/dev/null || fail "proxy_private exited"
    sleep 0.1
done
for n in 1 2 3; do fetch || fail "page through the tunnel before the cut (try $n)"; done
sleep 1
set -- $(stat_of $PUB_PID); PUB_T0=$1; PUB_R0=$2
set -- $(stat_of $PRIV_PID); PRIV_T0=$1; PRIV_R0=$2
step "tunnel up; baseline public threads=$PUB_T0 rss=${PUB_R0}KiB, private threads=$PRIV_T0 rss=${PRIV_R0}KiB"

# ---- cut the link silently
step "cutting the link: drop tcp port $TUNNEL in $NS_RTR's forward chain"
ip netns exec "$NS_RTR" nft insert rule ip filter forward tcp dport $TUNNEL drop || fail "nft insert"
ip netns exec "$NS_RTR" nft insert rule ip filter forward tcp sport $TUNNEL drop || fail "nft insert"
PRIV_LOG_MARK=$(wc -l <"$OUT/private.log")
T_CUT=$(now)
T_OFF=""
T_DOWN=""
PUB_TMAX=$PUB_T0; PUB_RMAX=$PUB_R0; PRIV_TMAX=$PRIV_T0; PRIV_RMAX=$PRIV_R0
TRIES=0
while [ $(( $(now) - T_CUT )) -lt "$CUT_SECONDS" ]; do
    kill -0 $PUB_PID 2>/dev/null || fail "proxy_public died during the cut"
    kill -0 $PRIV_PID 2>/dev/null || fail "proxy_private died during the cut"
    # A client tries the public port (it must not hang forever nor pile up).
    in_pub curl -s -o /dev/null --max-time 3 "http://203.0.113.10:$APP/index.html" &
    TRIES=$((TRIES + 1))
    if [ -z "$T_OFF" ] && online_is false 2>/dev/null; then
        T_OFF=$(( $(now) - T_CUT ))
        step "public shows the private offline after ~${T_OFF}s"
    fi
    if [ -z "$T_DOWN" ] && tail -n +"$((PRIV_LOG_MARK + 1))" "$OUT/private.log" | grep -q 'ev=tunnel_down'; then
        T_DOWN=$(( $(now) - T_CUT ))
        step "private logged tunnel_down after ~${T_DOWN}s"
    fi
    set -- $(stat_of $PUB_PID)
    [ "$1" -gt "$PUB_TMAX" ] && PUB_TMAX=$1
    [ "$2" -gt "$PUB_RMAX" ] && PUB_RMAX=$2
    set -- $(stat_of $PRIV_PID)
    [ "$1" -gt "$PRIV_TMAX" ] && PRIV_TMAX=$1
    [ "$2" -gt "$PRIV_RMAX" ] && PRIV_RMAX=$2
    sleep 1
done
sleep 4   # the background curls (--max-time 3) are done after this
step "during the cut ($TRIES client attempts): public threads max=$PUB_TMAX rss max=${PUB_RMAX}KiB, private threads max=$PRIV_TMAX rss max=${PRIV_RMAX}KiB"
[ -n "$T_OFF" ] || fail "the public still shows the private online ${CUT_SECONDS}s after the cut"
[ "$T_OFF" -le 25 ] || fail "the public took ${T_OFF}s to notice the dead tunnel (expected ~15-20s)"
[ -n "$T_DOWN" ] || fail "the private did not log tunnel_down within ${CUT_SECONDS}s of the cut"
[ "$T_DOWN" -le 25 ] || fail "the private took ${T_DOWN}s to give up the dead tunnel"
# No pile-up: one thread per open client at most (3 s curls, one a second).
[ $((PUB_TMAX - PUB_T0)) -le 16 ] || fail "public threads piled up: $PUB_T0 -> $PUB_TMAX"
[ $((PRIV_TMAX - PRIV_T0)) -le 8 ] || fail "private threads piled up: $PRIV_T0 -> $PRIV_TMAX"
[ $((PUB_RMAX - PUB_R0)) -le 32768 ] || fail "public RSS grew by $((PUB_RMAX - PUB_R0)) KiB"
[ $((PRIV_RMAX - PRIV_R0)) -le 32768 ] || fail "private RSS grew by $((PRIV_RMAX - PRIV_R0)) KiB"
fetch 3 && fail "a client got the page while the link was cut?"

# ---- restore the link: service must come back by itself
step "restoring the link"
for h in $(ip netns exec "$NS_RTR" nft -a list chain ip filter forward |
           sed -n "s/.*tcp [sd]port $TUNNEL drop # handle \([0-9]*\).*/\1/p"); do
    ip netns exec "$NS_RTR" nft delete rule ip filter forward handle "$h" || fail "nft delete"
done
T_FIX=$(now)
# Backoff is capped at 30 s plus up to 15 s of jitter, plus a 10 s dial timeout.
until fetch 5; do
    [ $(( $(now) - T_FIX )) -lt 90 ] || fail "service not back 90 s after the link was restored"
    kill -0 $PUB_PID 2>/dev/null || fail "proxy_public died"
    kill -0 $PRIV_PID 2>/dev/null || fail "proxy_private died"
    sleep 1
done
T_BACK=$(( $(now) - T_FIX ))
step "page through the tunnel again ~${T_BACK}s after the link was restored"
for n in 1 2 3; do fetch || fail "page after recovery (try $n)"; done
online_is true || fail "/list does not show the private online after recovery"

i=0
while :; do
    set -- $(stat_of $PUB_PID); PT=$1
    set -- $(stat_of $PRIV_PID); VT=$1
    [ "$PT" -le $((PUB_T0 + 2)) ] && [ "$VT" -le $((PRIV_T0 + 2)) ] && break
    i=$((i + 1))
    [ $i -lt 30 ] || fail "threads not back near baseline: public $PUB_T0 -> $PT, private $PRIV_T0 -> $VT"
    sleep 1
done
step "threads back: public $PT (baseline $PUB_T0), private $VT (baseline $PRIV_T0)"

kill -TERM $PRIV_PID $PUB_PID
wait $PUB_PID
rc=$?
[ $rc -eq 0 ] || fail "proxy_public exited with $rc after SIGTERM"
wait $PRIV_PID
rc=$?
[ $rc -eq 0 ] || fail "proxy_private exited with $rc after SIGTERM"
echo "PASS: nat_linkcut (offline after ~${T_OFF}s, tunnel_down after ~${T_DOWN}s, back ~${T_BACK}s after the link returned)"
exit 0
