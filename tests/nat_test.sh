#!/bin/sh
# Real NAT test in network namespaces (see shared NOTES: only RFC 5737 addresses).
#
#   pub  (203.0.113.10)  proxy_public; curl as the outside client
#   rtr  (203.0.113.2 / 192.0.2.1)  masquerades home -> pub, drops pub -> home
#   home (192.0.2.2)     proxy_private and a web server (python3 -m http.server)
#
# The page must come through the public port, the tunnel must arrive from the
# router's address (masqueraded), and pub must not reach home directly.
# Needs root, ip and nft; without root it prints SKIPPED and exits 0.
# Environment: BIN_DIR (default: repo top), PROXY_EXTRA_ARGS (both programs).
set -u

cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
BIN_DIR=${BIN_DIR:-$REPO}
EXTRA=${PROXY_EXTRA_ARGS:-}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIPPED: nat test needs root"
    exit 0
fi
if ! command -v ip >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1 ||
   ! command -v curl >/dev/null 2>&1; then
    echo "nat_test: installing iproute2/nftables/curl"
    sh tools/deps.sh nat || exit 1
fi
for b in proxy_public proxy_private; do
    [ -x "$BIN_DIR/$b" ] || { echo "FAIL: $BIN_DIR/$b missing (run make)"; exit 1; }
done

ID=nt$$
NS_PUB=${ID}pub
NS_RTR=${ID}rtr
NS_HOME=${ID}home
TMP=$(mktemp -d /tmp/nattest.XXXXXX)
OUT=${NAT_OUT:-$REPO/tests/out/${TEST_RUN:-nat-$(date +%Y%m%d-%H%M%S)}/nat_test}
mkdir -p "$OUT"
PIDS=""
TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
MARK=page-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
TUNNEL=6300
WEB=6301
APP=8080
HTTP=8000

. tests/netns_lib.sh  # (the script has cd-ed to the repository)
trap netns_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "FAIL: $*"
    for f in "$OUT"/*.log; do
        [ -f "$f" ] || continue
        echo "--- $f (tail)"
        tail -n 20 "$f"
    done
    exit 1
}

step() { echo "nat_test: $*"; }


# ---- the network
step "namespaces $NS_PUB $NS_RTR $NS_HOME"
netns_make_nat

# ---- the web server at home
netns_start_home_web

# ---- pub must not reach home directly (that is the point of the tunnel)
if in_pub curl -s -o /dev/null --max-time 3 "http://192.0.2.2:$HTTP/"; then
    fail "pub reaches 192.0.2.2 directly: the NAT is not in place"
fi

# ---- proxies
step "proxy_public in $NS_PUB"
# shellcheck disable=SC2086 # EXTRA is a list of words
ip netns exec "$NS_PUB" "$BIN_DIR/proxy_public" $TUNNEL $WEB --bind 203.0.113.10 --token "$TOKEN" \
    --state-dir "$TMP/state" --log-level debug $EXTRA >"$OUT/public.log" 2>&1 &
PUB_PID=$!
PIDS="$PIDS $PUB_PID"

list() {
    in_pub curl -s --max-time 5 -H "Authorization: Bearer $TOKEN" \
        "http://203.0.113.10:$WEB/list"
}
i=0
until list >/dev/null; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "public web API did not come up"
    kill -0 $PUB_PID 2>/dev/null || fail "proxy_public exited"
    sleep 0.1
done

# With TLS on, pin the certificate the public printed (ev=ready fingerprint=)
# and keep the known-hosts file in the temp dir, never in the user's home.
FP=$(sed -n 's/.*ev=ready.* fingerprint=\([0-9A-Fa-f:]*\).*/\1/p' "$OUT/public.log" | head -n 1)
PIN=""
if [ -n "$FP" ]; then
    PIN="--fingerprint $FP"
    step "pinning the public's certificate $FP"
fi

step "proxy_private in $NS_HOME, app web -> 192.0.2.2:$HTTP"
# shellcheck disable=SC2086
ip netns exec "$NS_HOME" "$BIN_DIR/proxy_private" 203.0.113.10 $TUNNEL --token "$TOKEN" --name home \
    --register "web:$APP:192.0.2.2:$HTTP" --known-hosts "$TMP/known_hosts" $PIN \
    --log-level debug $EXTRA >"$OUT/private.log" 2>&1 &
PRIV_PID=$!
PIDS="$PIDS $PRIV_PID"

check_list() {
    list | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
p = [x for x in d["privates"] if x["name"] == "home"]
a = [x for x in d["apps"] if x["name"] == "web"]
ok = p and p[0]["online"] is True and a and a[0]["online"] is True
if ok and sys.argv[1] == "address":
    print(p[0]["address"])
sys.exit(0 if ok else 1)
' "${1:-}"
}
i=0
until check_list >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 300 ] || { list; echo; fail "private/app not online in /list"; }
    kill -0 $PRIV_PID 2>/dev/null || fail "proxy_private exited"
    sleep 0.1
done

ADDR=$(check_list address)
step "tunnel address seen by the public: $ADDR"
case "$ADDR" in
203.0.113.2:*) ;;
*) fail "tunnel should arrive from the router 203.0.113.2 (masqueraded), /list says '$ADDR'" ;;
esac

# ---- the outside client fetches the page through the public port
step "curl http://203.0.113.10:$APP/index.html from $NS_PUB"
for n in 1 2 3; do
    BODY=$(in_pub curl -s --max-time 10 "http://203.0.113.10:$APP/index.html") ||
        fail "curl through the tunnel failed (try $n)"
    case "$BODY" in
    *"$MARK"*) ;;
    *) fail "page through the tunnel has other content: $BODY" ;;
    esac
done

# ---- clean stop
kill -TERM $PRIV_PID $PUB_PID
wait $PUB_PID
rc=$?
[ $rc -eq 0 ] || fail "proxy_public exited with $rc after SIGTERM"
wait $PRIV_PID
rc=$?
[ $rc -eq 0 ] || fail "proxy_private exited with $rc after SIGTERM"
echo "PASS: nat test (page fetched through the tunnel, tunnel from $ADDR)"
exit 0
