#!/bin/sh
# Long load and fault runs (make soak): the release binaries at the repo top.
#
#   sh tests/soak.sh
#
# 1. tests/test_faults.py with SOAK=1: 10,000 concurrent connections through one
#    tunnel (echo-checked at open and after a pause; threads, descriptors and
#    VmRSS per connection on both proxies), a churn of 20,000 connections, kills
#    of either side during traffic, 1 GiB to a client that does not read, a
#    stalled app, a half-closed slow reader, state-dir faults (root), valgrind,
#    and SOAK_SECONDS (default 300) of mixed traffic with the private SIGKILLed
#    every ~45 s.
# 2. tests/nat_linkcut.sh (root; SKIPPED otherwise).
# 3. tests/minimal_debian.sh (root): the README's two commands on a fresh
#    debootstrap'ed minimal Debian 12, and the .debs installed there and
#    started from their units' ExecStart lines (SKIPPED without root).
#
# As root it raises kernel.pid_max when it is below what 10,000 connections need
# (and restores it) and the RLIMIT_NOFILE hard limit; it says what it changed.
# Logs and figures: tests/out/soak-<time>/. Exit status non-zero on any failure.
set -u

cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
for b in proxy_public proxy_private; do
    [ -x "$REPO/$b" ] || { echo "soak: $REPO/$b missing (run make)" >&2; exit 1; }
done

TEST_RUN=${TEST_RUN:-soak-$(date +%Y%m%d-%H%M%S)}
OUT=$REPO/tests/out/$TEST_RUN
mkdir -p "$OUT"
export TEST_RUN TEST_MODE=release BIN_DIR="$REPO" SOAK=1 PYTHONDONTWRITEBYTECODE=1
export TEST_TIMEOUT=${TEST_TIMEOUT:-3600}
export SOAK_SECONDS=${SOAK_SECONDS:-300}

# The RLIMIT_NOFILE hard limit is raised by the tests themselves (root). Here:
# say what the machine has.
echo "== soak: logs in $OUT"
echo "== limits: pid_max=$(cat /proc/sys/kernel/pid_max) threads-max=$(cat /proc/sys/kernel/threads-max)" \
     "max_map_count=$(cat /proc/sys/vm/max_map_count) somaxconn=$(cat /proc/sys/net/core/somaxconn)" \
     "ports=$(tr '\t' - </proc/sys/net/ipv4/ip_local_port_range) nofile=$(ulimit -n)/$(ulimit -Hn)"

FAILED=""
START=$(date +%s)
echo "-- test_faults (SOAK=1, SOAK_SECONDS=$SOAK_SECONDS)"
timeout -k 10 7200 "$PY" tests/test_faults.py >"$OUT/test_faults.txt" 2>&1
rc=$?
sed -n -e '/ \.\.\. /p' -e '/^figure:/p' -e '/^limits:/p' -e '/^FAIL:/p' -e '/^ERROR:/p' \
    -e '/^Ran /p' -e '/^OK/p' -e '/^FAILED/p' "$OUT/test_faults.txt" | sed 's/^/   /'
[ $rc -eq 0 ] || FAILED="$FAILED test_faults"

echo "-- nat_linkcut"
NAT_OUT=$OUT sh tests/nat_linkcut.sh >"$OUT/nat_linkcut.txt" 2>&1
rc=$?
grep '^nat_linkcut:\|^PASS\|^FAIL\|^SKIPPED' "$OUT/nat_linkcut.txt" | sed 's/^/   /'
[ $rc -eq 0 ] || FAILED="$FAILED nat_linkcut"

echo "-- minimal_debian"
sh tests/minimal_debian.sh >"$OUT/minimal_debian.txt" 2>&1
rc=$?
grep '^-- \|^   \|^minimal_debian:' "$OUT/minimal_debian.txt" | sed 's/^/   /'
[ $rc -eq 0 ] || FAILED="$FAILED minimal_debian"

END=$(date +%s)
echo "== soak took $((END - START)) s; pid_max now $(cat /proc/sys/kernel/pid_max)"
if [ -n "$FAILED" ]; then
    echo "== FAILED:$FAILED (details in $OUT/)"
    exit 1
fi
echo "== soak passed"
exit 0
