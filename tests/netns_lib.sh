# Shared by tests/nat_test.sh and tests/nat_linkcut.sh (sourced, POSIX sh).
# Expects: NS_PUB NS_RTR NS_HOME (namespace names), TMP, OUT, PY, HTTP (port),
# MARK (text of the page), PIDS (started programs), and a fail() function.
# Only documentation address ranges (RFC 5737) are used.

in_pub() { ip netns exec "$NS_PUB" "$@"; }
in_home() { ip netns exec "$NS_HOME" "$@"; }

# Stop the started programs (SIGTERM, then SIGKILL after 5 s), delete the
# namespaces and the temporary directory. Meant for `trap netns_cleanup EXIT`.
netns_cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    _i=0
    while [ $_i -lt 50 ]; do
        _alive=""
        for p in $PIDS; do kill -0 "$p" 2>/dev/null && _alive="$_alive $p"; done
        [ -z "$_alive" ] && break
        _i=$((_i + 1))
        sleep 0.1
    done
    for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
    for n in $NS_PUB $NS_RTR $NS_HOME; do ip netns del "$n" 2>/dev/null; done
    rm -rf "$TMP"
}

# pub (203.0.113.10) -- rtr (203.0.113.2 | 192.0.2.1, masquerading) -- home (192.0.2.2):
# home reaches pub only through the router's NAT; pub cannot reach home.
netns_make_nat() {
    ip netns add "$NS_PUB" && ip netns add "$NS_RTR" && ip netns add "$NS_HOME" ||
        fail "cannot create namespaces"
    ip link add vpub netns "$NS_PUB" type veth peer name vrw netns "$NS_RTR" || fail "veth pub"
    ip link add vhome netns "$NS_HOME" type veth peer name vrl netns "$NS_RTR" || fail "veth home"
    ip -n "$NS_PUB" addr add 203.0.113.10/24 dev vpub
    ip -n "$NS_PUB" link set vpub up
    ip -n "$NS_PUB" link set lo up
    ip -n "$NS_RTR" addr add 203.0.113.2/24 dev vrw
    ip -n "$NS_RTR" link set vrw up
    ip -n "$NS_RTR" addr add 192.0.2.1/24 dev vrl
    ip -n "$NS_RTR" link set vrl up
    ip -n "$NS_RTR" link set lo up
    ip -n "$NS_HOME" addr add 192.0.2.2/24 dev vhome
    ip -n "$NS_HOME" link set vhome up
    ip -n "$NS_HOME" link set lo up
    ip -n "$NS_HOME" route add default via 192.0.2.1 || fail "home default route"
    ip netns exec "$NS_RTR" sysctl -qw net.ipv4.ip_forward=1 || fail "ip_forward"
    ip netns exec "$NS_RTR" nft -f - <<'EOF' || fail "nft rules"
table ip nat {
  chain postrouting {
    type nat hook postrouting priority 100;
    oifname "vrw" masquerade
  }
}
table ip filter {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "vrl" accept
  }
}
EOF
}

# A web server in home on 192.0.2.2:$HTTP serving a page that says $MARK.
netns_start_home_web() {
    mkdir -p "$TMP/www" && mkdir -m 700 "$TMP/state"
    printf '<html><body><h1>%s</h1></body></html>\n' "$MARK" >"$TMP/www/index.html"
    # Started directly (ip netns exec execs it) so that $! is the program itself.
    ip netns exec "$NS_HOME" "$PY" -m http.server "$HTTP" --bind 192.0.2.2 \
        --directory "$TMP/www" >"$OUT/http.log" 2>&1 &
    PIDS="$PIDS $!"
    _i=0
    until in_home curl -s -o /dev/null --max-time 2 "http://192.0.2.2:$HTTP/"; do
        _i=$((_i + 1)); [ $_i -lt 100 ] || fail "web server in home did not start"
        sleep 0.1
    done
}
