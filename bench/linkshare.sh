#!/bin/sh
# sh bench/linkshare.sh: how UDP and TCP share a tunnel whose link, not the
# CPU, is the bottleneck (docs/OPERATIONS.md, UDP apps: the network case).
# As root: two network namespaces made here, joined by a veth pair shaped
# with tbf to LINKSHARE_RATE (200mbit) each way (198.51.100.1 and .2);
# proxy_public, the iperf3 client and a UDP flooder in one, proxy_private,
# iperf3 -s and a UDP sink in the other. Per round: the TCP upload alone, then
# the same upload while 1400-byte datagrams flood the UDP app flat out; prints
# both and the UDP the tunnel carried meanwhile (datagrams in minus drops, from
# /list). LINKSHARE_MODE plain or tls (tls), LINKSHARE_ROUNDS (2).
# The loopback flood of `make bench` is the CPU case; this is the other one.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
RATE=${LINKSHARE_RATE:-200mbit}
MODE=${LINKSHARE_MODE:-tls}
ROUNDS=${LINKSHARE_ROUNDS:-2}
SECONDS_TCP=4
FLOOD_SIZE=1400

if [ "$(id -u)" != 0 ]; then
    echo "linkshare: needs root (network namespaces, tc)" >&2
    exit 1
fi
for c in ip tc iperf3 curl python3; do
    command -v $c >/dev/null 2>&1 || { echo "linkshare: $c missing (sh tools/deps.sh test)" >&2; exit 1; }
done
make -s proxy_public proxy_private >/dev/null && make -s -f bench/Makefile >/dev/null || exit 1
TB="$ROOT/build/bench/tcpbench"
T=$(mktemp -d)
A=lsA$$
B=lsB$$
cleanup() {
    for n in $A $B; do
        pids=$(ip netns pids $n 2>/dev/null)
        [ -n "$pids" ] && kill $pids 2>/dev/null
    done
    sleep 0.3
    for n in $A $B; do
        pids=$(ip netns pids $n 2>/dev/null)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null
        ip netns del $n 2>/dev/null
    done
    rm -rf "$T"
}
trap cleanup EXIT INT TERM

ip netns add $A && ip netns add $B || exit 1
ip link add va$$ type veth peer name vb$$ || exit 1
ip link set va$$ netns $A
ip link set vb$$ netns $B
ip -n $A addr add 198.51.100.1/24 dev va$$
ip -n $B addr add 198.51.100.2/24 dev vb$$
for n in $A $B; do ip -n $n link set lo up; done
ip -n $A link set va$$ up
ip -n $B link set vb$$ up
ip netns exec $A tc qdisc add dev va$$ root tbf rate "$RATE" burst 64kb latency 20ms || exit 1
ip netns exec $B tc qdisc add dev vb$$ root tbf rate "$RATE" burst 64kb latency 20ms || exit 1

pub_extra="" priv_extra=""
if [ "$MODE" = plain ]; then
    pub_extra=--insecure-plaintext priv_extra=--insecure-plaintext
else
    priv_extra="--known-hosts $T/known_hosts"
fi
mkdir "$T/state"
ip netns exec $B iperf3 -s -p 5201 >"$T/iperf-s.log" 2>&1 &
ip netns exec $B "$TB" udp-echo 0 sink >"$T/sink.log" 2>&1 &
i=0
while [ $i -lt 50 ] && ! grep -q '^port=' "$T/sink.log"; do sleep 0.1; i=$((i + 1)); done
sink=$(sed -n 's/^port=//p' "$T/sink.log")
# shellcheck disable=SC2086
ip netns exec $A ./proxy_public 6300 6301 --token linkshare --state-dir "$T/state" $pub_extra \
    >"$T/pub.log" 2>&1 &
ip netns exec $A "$TB" waitport 127.0.0.1 6300 10 || { echo "linkshare: proxy_public did not start" >&2; exit 1; }
# shellcheck disable=SC2086
ip netns exec $B ./proxy_private 198.51.100.1 6300 --token linkshare --name linkshare $priv_extra \
    --register ls-tcp:7000:127.0.0.1:5201 --register "ls-udp:7001:127.0.0.1:$sink/udp" \
    >"$T/priv.log" 2>&1 &
ip netns exec $A "$TB" waitport 127.0.0.1 7000 20 || { echo "linkshare: app not up" >&2; exit 1; }
sleep 1

mbit() { python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e6))'; }
# carried: datagrams in minus every drop of the UDP app, from /list
carried() {
    ip netns exec $A curl -s -m 5 -H "Authorization: Bearer linkshare" http://127.0.0.1:6301/list |
        python3 -c 'import json,sys
a = [a for a in json.load(sys.stdin)["apps"] if a["name"] == "ls-udp"][0]
print(a["datagrams_in"] - sum(a["drops"].values()))'
}
echo "# linkshare: $MODE tunnel over a $RATE link, TCP upload ${SECONDS_TCP} s alone and under a UDP flood"
r=1
while [ $r -le "$ROUNDS" ]; do
    alone=$(ip netns exec $A timeout 60 iperf3 -c 127.0.0.1 -p 7000 -t $SECONDS_TCP -J | mbit)
    c0=$(carried)
    ip netns exec $A "$TB" udp-flood 127.0.0.1 7001 $((SECONDS_TCP + 1)) $FLOOD_SIZE >"$T/flood.out" 2>/dev/null &
    fpid=$!
    sleep 0.5
    flooded=$(ip netns exec $A timeout 60 iperf3 -c 127.0.0.1 -p 7000 -t $SECONDS_TCP -J | mbit)
    wait $fpid
    sleep 0.5
    c1=$(carried)
    udp=$(awk -v n=$((c1 - c0)) -v s=$FLOOD_SIZE -v t=$((SECONDS_TCP + 1)) 'BEGIN { printf "%.1f", n * s * 8 / t / 1e6 }')
    echo "round $r: TCP alone $alone Mbit/s; under the flood TCP $flooded Mbit/s, UDP carried $udp Mbit/s (offered $(cat "$T/flood.out") datagrams)"
    r=$((r + 1))
done
