#!/bin/sh
# Checks (and as root installs) the Debian 12 packages this project needs.
#
#   sh tools/deps.sh [build|demo|test|nat|soak]
#
# build: what `make` needs (libhiredis-dev for the cluster store).  demo: what tools/demo.sh needs (the build, python3
# for the sample web app, curl for its check).  test (default): everything
# `make test` uses (sanitizers, real-NAT tests with dnsmasq, dig,
# wireguard-go, vsftpd and lftp, nginx for the PROXY protocol test, haproxy for
# --accept-proxy-from and the cluster test, redis-server and redis-sentinel for
# the cluster store (tests/test_cluster.py), browser test, benchmarks, the Debian package test).  nat: the tools of tests/nat_test.sh.  soak: test plus
# what `make soak` adds (debootstrap for tests/minimal_debian.sh).
# tests/test_scripts.py checks that every program the scripts and tests call
# is in their set (or on every Debian 12).  As root, missing packages are installed with apt-get;
# otherwise the exact command is printed and the exit status is 1.
set -u

SET=${1:-test}
BUILD="build-essential gcc make pkg-config libjansson-dev libcivetweb-dev libssl-dev libhiredis-dev"
DEMO="$BUILD python3 curl"
NAT="iproute2 nftables conntrack curl python3"
TEST="$BUILD clang libclang-rt-14-dev python3 curl iproute2 nftables conntrack iperf3 socat
openssh-server openssh-client tcpdump valgrind chromium nodejs npm
dpkg-dev debhelper lintian fakeroot systemd man-db git procps openssl strace
dnsmasq bind9-dnsutils wireguard-go wireguard-tools vsftpd lftp nginx-light haproxy redis-server redis-sentinel"
SOAK="$TEST debootstrap"

case "$SET" in
build) WANT=$BUILD ;;
demo) WANT=$DEMO ;;
test) WANT=$TEST ;;
nat) WANT=$NAT ;;
soak) WANT=$SOAK ;;
*) echo "usage: sh tools/deps.sh [build|demo|test|nat|soak]" >&2; exit 2 ;;
esac

# A package also counts as present when its command is there from another
# source (e.g. nodejs builds that bundle npm and conflict with Debian's npm).
command_of() {
    case "$1" in
    npm) echo npm ;;
    nodejs) echo node ;;
    chromium) echo chromium ;;
    *) echo "" ;;
    esac
}

MISSING=""
for p in $WANT; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)
    if [ "$st" != "install ok installed" ]; then
        c=$(command_of "$p")
        if [ -n "$c" ] && command -v "$c" >/dev/null 2>&1; then
            continue
        fi
        MISSING="$MISSING $p"
    fi
done

if [ -z "$MISSING" ]; then
    echo "deps ($SET): all present"
    exit 0
fi

echo "deps ($SET): missing:$MISSING"
if [ "$(id -u)" -ne 0 ]; then
    echo "install them with:"
    echo "  sudo apt-get install -y$MISSING"
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# A package left half-configured (status "unpacked") is finished first.
dpkg --configure -a >/dev/null 2>&1 || true
# shellcheck disable=SC2086 # MISSING is a list of words
if ! apt-get install -y --no-install-recommends $MISSING; then
    apt-get update && apt-get install -y --no-install-recommends $MISSING || {
        echo "deps ($SET): apt-get install failed" >&2
        exit 1
    }
fi
echo "deps ($SET): installed:$MISSING"
