#!/bin/sh
# Demo on this machine's loopback: builds, starts proxy_public and
# proxy_private, and publishes a small web page (python3 -m http.server) through
# the tunnel with --register.  Prints how to reach it; Ctrl-C stops everything.
#
#   sh tools/demo.sh           # runs until Ctrl-C
#   sh tools/demo.sh --check   # fetches the page through the tunnel, then stops
#                              # (exit 0 when it came through)
#
# Needs what `sh tools/deps.sh demo` checks (and, as root, installs): the
# build tools and libraries, python3 (the sample web app) and curl.
# Environment: PROXY_EXTRA_ARGS adds arguments to both programs.
set -u

cd "$(dirname "$0")/.." || exit 2
CHECK=0
case "${1:-}" in
--check) CHECK=1 ;;
"") ;;
*) echo "usage: sh tools/demo.sh [--check]" >&2; exit 2 ;;
esac
EXTRA=${PROXY_EXTRA_ARGS:-}

sh tools/deps.sh demo || exit 1
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
make || exit 1

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

TMP=$(mktemp -d /tmp/natdemo.XXXXXX)
PIDS=""
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "demo: stopping"
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

TUNNEL=$(free_port)
WEB=$(free_port)
APP=$(free_port)
HTTP=$(free_port)
for p in "$TUNNEL" "$WEB" "$APP" "$HTTP"; do
    case "$p" in
    ''|*[!0-9]*) echo "demo: could not pick free ports with $PY" >&2; exit 1 ;;
    esac
done
TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
# The token goes to both programs in the environment, not on the command
# line (where ps shows it to every user).
export NAT_TOKEN="$TOKEN"

mkdir -p "$TMP/www" && mkdir -m 700 "$TMP/state"
cat >"$TMP/www/index.html" <<'EOF'
<!doctype html>
<html><head><title>Hello through the tunnel</title></head>
<body><h1>Hello through the tunnel</h1>
<p>This page is served by python3 -m http.server on the private side and
reached through proxy_public.</p></body></html>
EOF

"$PY" -m http.server "$HTTP" --bind 127.0.0.1 --directory "$TMP/www" \
    >"$TMP/http.log" 2>&1 &
PIDS="$PIDS $!"

# shellcheck disable=SC2086 # EXTRA is a list of words
./proxy_public "$TUNNEL" "$WEB" --bind 127.0.0.1 \
    --state-dir "$TMP/state" $EXTRA 2>"$TMP/public.log" &
PUB=$!
PIDS="$PIDS $PUB"

# With TLS on (the default) the public prints its certificate's fingerprint
# in its ready line; the private pins it.  The known-hosts file stays in the
# demo's temp dir.
i=0
until grep -q 'ev=ready' "$TMP/public.log" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -ge 100 ] || ! kill -0 $PUB 2>/dev/null; then
        echo "demo: proxy_public did not start; log:"
        cat "$TMP/public.log"
        exit 1
    fi
    sleep 0.1
done
FP=$(sed -n 's/.*ev=ready.* fingerprint=\([0-9A-Fa-f:]*\).*/\1/p' "$TMP/public.log" | head -n 1)
PIN=""
[ -n "$FP" ] && PIN="--fingerprint $FP"

# shellcheck disable=SC2086
./proxy_private 127.0.0.1 "$TUNNEL" --name demo \
    --register "web:$APP:127.0.0.1:$HTTP" --known-hosts "$TMP/known_hosts" $PIN \
    $EXTRA 2>"$TMP/private.log" &
PRIV=$!
PIDS="$PIDS $PRIV"

# Bounded wait until /list shows the app online.
i=0
until curl -s --max-time 2 -H "Authorization: Bearer $TOKEN" \
        "http://127.0.0.1:$WEB/list" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if any(a["name"] == "web" and a["online"] for a in d["apps"]) else 1)
' 2>/dev/null; do
    i=$((i + 1))
    if [ $i -ge 150 ] || ! kill -0 $PUB 2>/dev/null || ! kill -0 $PRIV 2>/dev/null; then
        echo "demo: the tunnel did not come up; logs:"
        tail -n 20 "$TMP/public.log" "$TMP/private.log"
        exit 1
    fi
    sleep 0.2
done

if [ $CHECK -eq 1 ]; then
    if curl -s --max-time 10 "http://127.0.0.1:$APP/" | grep -q "Hello through the tunnel"; then
        echo "demo: OK: the page came through the tunnel (http://127.0.0.1:$APP/)"
        exit 0
    fi
    echo "demo: FAILED: the page did not come through; logs:"
    tail -n 20 "$TMP/public.log" "$TMP/private.log"
    exit 1
fi

cat <<EOF

The tunnel is up.
  page through the tunnel:  curl http://127.0.0.1:$APP/
  web page of the public:   http://127.0.0.1:$WEB/
  token:                    $TOKEN
  tunnel certificate:       ${FP:-none (plaintext)}
  API:                      curl -H 'Authorization: Bearer $TOKEN' http://127.0.0.1:$WEB/list
  logs:                     $TMP/public.log $TMP/private.log

Press Ctrl-C to stop.
EOF

# Wait until Ctrl-C (or one of the proxies exits).
while kill -0 $PUB 2>/dev/null && kill -0 $PRIV 2>/dev/null; do
    sleep 1
done
echo "demo: a proxy exited; logs:"
tail -n 20 "$TMP/public.log" "$TMP/private.log"
exit 1
