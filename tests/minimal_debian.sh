#!/bin/sh
# A newcomer's machine and a packaged install, on a fresh minimal Debian 12
# (part of `make soak`; root; 10-40 minutes, mostly downloads):
#
#   sh tests/minimal_debian.sh [--quick]
#
# 1. debootstrap --variant=minbase bookworm into a new folder, plus /etc/hosts
#    (as every real install has) and /etc/resolv.conf (for apt only).
# 2. The tree is copied in (without build/ and tests/out/); inside the chroot,
#    as a newcomer would: `sh tools/demo.sh --check` (installs what it needs,
#    builds, fetches the page through the tunnel), then
#    `TESTS="test_cli test_config" sh tools/test.sh` (installs the test
#    packages and runs `make test` on those files in release, ASan and TSan;
#    --quick skips this step, the long one).
# 3. The .debs are built there (dpkg-buildpackage) and installed with apt; the
#    service users exist, /etc/proxy_*.conf are 640 root:<service group>, the
#    units are in /lib/systemd/system and pass systemd-analyze verify; both
#    binaries start from their units' ExecStart lines as the units' users
#    with the example configs (ports, host and token adjusted), the private
#    connects and an app answers through the tunnel.
# Everything runs on loopback; the folder and its mounts are removed at the end.
set -u

QUICK=0
[ "${1:-}" = --quick ] && QUICK=1
if [ "$(id -u)" -ne 0 ]; then
    echo "minimal_debian: SKIPPED (needs root)"
    exit 0
fi
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
sh tools/deps.sh soak >/dev/null || { echo "minimal_debian: cannot install debootstrap" >&2; exit 1; }

ROOT=$(mktemp -d /var/tmp/minbase.XXXXXX)
chmod 755 "$ROOT" # it is the chroot's /: the service users must enter it
MOUNTS=""
FAILED=""
cleanup() {
    # Processes left in the chroot (ours only: found by their root folder).
    for p in /proc/[0-9]*; do
        if [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ]; then
            kill -9 "${p#/proc/}" 2>/dev/null
        fi
    done
    for m in $MOUNTS; do umount -l "$ROOT/$m" 2>/dev/null; done
    rm -rf "$ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { echo "-- $*"; }
fail() { echo "   FAIL: $*"; FAILED="$FAILED|$*"; }
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 "$@"; }

step "debootstrap --variant=minbase bookworm $ROOT"
MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
if ! debootstrap --variant=minbase bookworm "$ROOT" "${MIRROR:-http://deb.debian.org/debian}" \
        >"$ROOT.debootstrap.log" 2>&1; then
    tail -n 20 "$ROOT.debootstrap.log"
    echo "minimal_debian: debootstrap failed"
    exit 1
fi
rm -f "$ROOT.debootstrap.log"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
for m in proc sys dev dev/pts; do
    mount --bind "/$m" "$ROOT/$m" && MOUNTS="$m $MOUNTS"
done
for tool in python3 curl git make cc; do
    if in_root sh -c "command -v $tool" >/dev/null 2>&1; then
        echo "   note: $tool is already there in minbase"
    fi
done

step "copy the tree into /src"
mkdir -p "$ROOT/src"
tar -C "$REPO" --exclude=./build --exclude=./tests/out --exclude=./.git \
    --exclude=./proxy_public --exclude=./proxy_private --exclude=./node_modules -cf - . |
    tar -C "$ROOT/src" -xf -

step "sh tools/demo.sh --check (as a newcomer)"
if in_root sh -c 'cd /src && sh tools/demo.sh --check' >"$ROOT/demo.log" 2>&1; then
    tail -n 1 "$ROOT/demo.log" | sed 's/^/   /'
    grep 'demo: OK' "$ROOT/demo.log" | sed 's/^/   /'
else
    tail -n 30 "$ROOT/demo.log" | sed 's/^/   /'
    fail "tools/demo.sh --check"
fi

if [ $QUICK -eq 0 ]; then
    step "TESTS=\"test_cli test_config\" sh tools/test.sh"
    if in_root sh -c 'cd /src && TESTS="test_cli test_config" sh tools/test.sh' \
            >"$ROOT/test.log" 2>&1; then
        grep '^== ' "$ROOT/test.log" | sed 's/^/   /'
    else
        tail -n 30 "$ROOT/test.log" | sed 's/^/   /'
        fail "tools/test.sh"
    fi
fi

step "dpkg-buildpackage and apt install of the .debs"
in_root sh -c 'cd /src && sh tools/deps.sh test >/dev/null' || fail "deps for the package build"
if in_root sh -c 'cd /src && make clean >/dev/null && DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -us -uc -b' \
        >"$ROOT/pkg.log" 2>&1 &&
    in_root sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y ./proxy-public_*.deb ./proxy-private_*.deb' \
        >>"$ROOT/pkg.log" 2>&1; then
    echo "   installed: $(in_root dpkg-query -W -f '${Package} ${Version}; ' proxy-public proxy-private)"
else
    tail -n 30 "$ROOT/pkg.log" | sed 's/^/   /'
    fail "package build or install"
fi
for side in public private; do
    in_root getent passwd "proxy-$side" >/dev/null || fail "no user proxy-$side"
    got=$(in_root stat -c '%a %U:%G' "/etc/proxy_$side.conf" 2>/dev/null)
    [ "$got" = "640 root:proxy-$side" ] || fail "/etc/proxy_$side.conf is '$got'"
    [ -f "$ROOT/lib/systemd/system/proxy_$side.service" ] || fail "no proxy_$side.service"
    [ -f "$ROOT/usr/share/man/man1/proxy_$side.1.gz" ] || fail "no proxy_$side(1)"
done
[ -f "$ROOT/lib/systemd/system/proxy_private@.service" ] || fail "no proxy_private@.service"
if command -v systemd-analyze >/dev/null 2>&1; then
    # The host's systemd-analyze, on the installed tree (binaries and man pages
    # looked up under --root).
    if ! out=$(systemd-analyze verify --root="$ROOT" --man=no proxy_public.service \
            proxy_private.service 2>&1); then
        echo "$out" | sed 's/^/   /'
        fail "systemd-analyze verify --root"
    fi
fi

step "both binaries from their ExecStart lines, as the units' users"
free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
TP=$(free_port); WP=$(free_port); AP=$(free_port); EP=$(free_port)
sed -i -e "s/^tunnel-port = .*/tunnel-port = $TP/" -e "s/^web-port = .*/web-port = $WP/" \
    -e "s/^#bind = .*/bind = 127.0.0.1/" "$ROOT/etc/proxy_public.conf"
mkdir -p "$ROOT/var/lib/proxy_public" "$ROOT/var/lib/proxy_private"
in_root chown proxy-public:proxy-public /var/lib/proxy_public
in_root chown proxy-private:proxy-private /var/lib/proxy_private
chmod 700 "$ROOT/var/lib/proxy_public" "$ROOT/var/lib/proxy_private"
unit_cmd() { sed -n 's/^ExecStart=//p' "$ROOT/lib/systemd/system/$1" | head -n 1; }
# shellcheck disable=SC2046 # the ExecStart line is a list of words
chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin STATE_DIRECTORY=/var/lib/proxy_public \
    setpriv --reuid=proxy-public --regid=proxy-public --clear-groups \
    $(unit_cmd proxy_public.service) >"$ROOT/public.log" 2>&1 &
i=0
until grep -q 'ev=ready' "$ROOT/public.log" 2>/dev/null || [ $i -ge 100 ]; do
    i=$((i + 1)); sleep 0.1
done
grep -q 'ev=ready' "$ROOT/public.log" || fail "proxy_public from its unit: no ev=ready"
TOKEN=$(cat "$ROOT/var/lib/proxy_public/token" 2>/dev/null)
in_root sh -c "umask 077; printf '%s\n' '$TOKEN' > /etc/proxy_private.token; chown proxy-private /etc/proxy_private.token"
# A home app: a tiny echo on loopback.
/usr/bin/python3 - "$EP" <<'EOF' >/dev/null 2>&1 &
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8); s.settimeout(120)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    try:
        c, _ = s.accept()
    except OSError:
        break
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
ECHO=$!
sed -i -e "s/^host = .*/host = 127.0.0.1/" -e "s/^tunnel-port = .*/tunnel-port = $TP/" \
    -e "s/^register = ssh:.*/register = echo:$AP:127.0.0.1:$EP/" "$ROOT/etc/proxy_private.conf"
# shellcheck disable=SC2046
chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin STATE_DIRECTORY=/var/lib/proxy_private \
    setpriv --reuid=proxy-private --regid=proxy-private --clear-groups \
    $(unit_cmd proxy_private.service) >"$ROOT/private.log" 2>&1 &
ok=0
i=0
while [ $i -lt 100 ]; do
    got=$(printf 'through the tunnel\n' | /usr/bin/python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
s.sendall(sys.stdin.buffer.read()); s.shutdown(socket.SHUT_WR)
print(s.recv(100).decode().strip())' "$AP" 2>/dev/null)
    if [ "$got" = "through the tunnel" ]; then ok=1; break; fi
    i=$((i + 1)); sleep 0.2
done
if [ $ok -eq 1 ]; then
    echo "   an app answered through the tunnel (public as proxy-public, private as proxy-private)"
else
    tail -n 10 "$ROOT/public.log" "$ROOT/private.log" | sed 's/^/   /'
    fail "no answer through the tunnel of the packaged binaries"
fi
kill "$ECHO" 2>/dev/null

if [ -n "$FAILED" ]; then
    echo "minimal_debian: FAILED: $(echo "$FAILED" | tr '|' '\n' | sed '/^$/d' | tr '\n' ';')"
    exit 1
fi
echo "minimal_debian: PASS"
exit 0
