#!/bin/sh
# Browser end-to-end test of the management page, against the real binaries.
#
#   sh tests/browser/run.sh            # uses ./proxy_public and ./proxy_private
#   BIN_DIR=build/asan sh tests/browser/run.sh
#
# Environment:
#   BIN_DIR       where proxy_public and proxy_private are (default: the repo top)
#   PROXY_EXTRA_ARGS  extra flags given to BOTH proxies (e.g. --insecure-plaintext: the
#                 tunnel is TLS by default), as in tests/harness.py; COMMON_ARGS below is
#                 the one place to add them for good
#   PUBLIC_FLAGS  extra flags for proxy_public only;  PRIVATE_FLAGS: for proxy_private only
#   CHROMIUM      the browser (default /usr/bin/chromium; installed with apt-get when
#                 missing and running as root)
#   E2E_TIMEOUT   seconds the whole browser script may take (default 240)
#
# Only loopback addresses are used. Screenshots and logs go to tests/out/browser/.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
here=$top/tests/browser
BIN_DIR=${BIN_DIR:-$top}
case $BIN_DIR in /*) ;; *) BIN_DIR=$top/$BIN_DIR ;; esac
# Flags for both programs, in one place (e.g. "--insecure-plaintext" to run without TLS).
COMMON_ARGS=""
PROXY_EXTRA_ARGS=${PROXY_EXTRA_ARGS:-}
PUBLIC_FLAGS=${PUBLIC_FLAGS:-}
PRIVATE_FLAGS=${PRIVATE_FLAGS:-}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
E2E_TIMEOUT=${E2E_TIMEOUT:-240}
out=$top/tests/out/browser
mkdir -p "$out"
rm -f "$out"/*.png "$out"/*.log

say() { echo "browser-test: $*"; }

for b in proxy_public proxy_private; do
    if [ ! -x "$BIN_DIR/$b" ]; then
        say "$BIN_DIR/$b is missing: build it first (make)"
        echo "0 passed, 1 failed"
        exit 1
    fi
done

# ------------------------------------------------------------------ chromium
if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian's chromium"
        timeout 600 apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq chromium >/dev/null
    fi
    if [ ! -x "$CHROMIUM" ]; then
        say "$CHROMIUM is missing (install Debian's chromium package)"
        echo "0 passed, 1 failed"
        exit 1
    fi
fi
command -v node >/dev/null 2>&1 || { say "node is missing (apt-get install nodejs npm)"; exit 1; }

# ------------------------------------------------------------------ playwright-core
# playwright-core never downloads a browser by itself; the variable makes sure of it.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ -f "$here/package-lock.json" ]; then
    (cd "$here" && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
else
    (cd "$here" && timeout 300 npm install --no-audit --no-fund --loglevel=error)
    say "package-lock.json was created: commit it"
fi

# ------------------------------------------------------------------ processes
work=$(mktemp -d "${TMPDIR:-/tmp}/browser-test.XXXXXX")
pids=""

cleanup() {
    status=$?
    trap - EXIT INT TERM
    # proxy_private processes the browser script started (it stops them itself, unless it
    # was stopped first).
    if [ -s "$work/extra.pids" ]; then
        pids="$pids $(cat "$work/extra.pids")"
    fi
    for pid in $pids; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Bounded wait for them to go, then SIGKILL whatever is left.
    i=0
    while [ $i -lt 50 ]; do
        alive=""
        for pid in $pids; do
            if kill -0 "$pid" 2>/dev/null; then alive="$alive $pid"; fi
        done
        [ -z "$alive" ] && break
        sleep 0.1
        i=$((i + 1))
    done
    for pid in $pids; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        for log in public private app friend; do
            if [ -s "$out/$log.log" ]; then
                say "last lines of $log.log:"
                tail -n 20 "$out/$log.log" | sed 's/^/    /'
            fi
        done
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck disable=SC2046
set -- $(node "$here/free_ports.js" 2)
tunnel_port=$1
web_port=$2
token="browser-test-token-$$-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
mkdir -p "$work/state"

node "$here/echo_app.js" "$work/app.port" >"$out/app.log" 2>&1 &
pids="$pids $!"
i=0
while [ ! -s "$work/app.port" ]; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then say "the echo app did not start"; exit 1; fi
    sleep 0.1
done
app_port=$(cat "$work/app.port")

say "tunnel port $tunnel_port, web port $web_port, app port $app_port, binaries from $BIN_DIR"
# shellcheck disable=SC2086
"$BIN_DIR/proxy_public" "$tunnel_port" "$web_port" --token "$token" --state-dir "$work/state" \
    --bind 127.0.0.1 $COMMON_ARGS $PROXY_EXTRA_ARGS $PUBLIC_FLAGS >"$out/public.log" 2>&1 &
public_pid=$!
pids="$pids $public_pid"
# The tunnel is TLS by default: the private side trusts the public side's self-signed
# certificate on first use, kept in a known-hosts file of this run only (a port reused
# by another run's server must never look like a changed certificate).
# shellcheck disable=SC2086
"$BIN_DIR/proxy_private" 127.0.0.1 "$tunnel_port" --token "$token" --name home \
    --known-hosts "$work/known_hosts" $COMMON_ARGS $PROXY_EXTRA_ARGS $PRIVATE_FLAGS >"$out/private.log" 2>&1 &
private_pid=$!
pids="$pids $private_pid"

# ------------------------------------------------------------------ the browser script
# The script waits (bounded) for the web port and for the private side to be online.
set +e
# It starts a second proxy_private itself, with a token it creates on the page: from
# BIN_DIR, with the same flags, the same known-hosts file, its PID in extra.pids.
WEB_URL="http://127.0.0.1:$web_port" TOKEN="$token" TUNNEL_PORT="$tunnel_port" \
WEB_PORT="$web_port" APP_PORT="$app_port" PUBLIC_PID="$public_pid" PRIVATE_PID="$private_pid" \
OUT_DIR="$out" CHROMIUM="$CHROMIUM" E2E_TIMEOUT="$E2E_TIMEOUT" \
BIN_DIR="$BIN_DIR" WORK_DIR="$work" KNOWN_HOSTS="$work/known_hosts" \
PRIVATE_ARGS="$COMMON_ARGS $PROXY_EXTRA_ARGS $PRIVATE_FLAGS" \
    node "$here/e2e.js" &
e2e_pid=$!
pids="$e2e_pid $pids"
# In the background so that a signal to this script is acted on at once (the trap
# then stops the browser script and the proxies).
wait "$e2e_pid"
rc=$?
set -e
if [ $rc -eq 0 ]; then say "PASS (screenshots in tests/out/browser/)"; else say "FAIL ($rc)"; fi
exit $rc
