# Renders bench/run.sh's results (lines PATH.METRIC=VALUE) as Markdown: one
# column per path, every figure beside its ratio to ssh -R and to direct, then
# the targets and whether each is met. Variables come from run.sh (-v).

function has(k) { return (k in R) && R[k] != "" }

function ratio(v, ref) {
    if (ref == "" || ref + 0 == 0) return ""
    return sprintf((v / ref < 0.1 ? "%.3f×" : "%.2f×"), v / ref)
}

# cell(path, metric, fmt, vs_direct): the value and its ratios, or why none.
function cell(p, m, fmt, vs_direct,    k, v, s, rs, rd) {
    k = p "." m
    if (!has(k)) {
        if (has(p ".status")) return "n/a (" R[p ".status"] ")"
        if (p == "direct" && (m ~ /^(rss|cpu)/)) return "— (no relay)"
        return "n/a"
    }
    v = R[k]
    s = sprintf(fmt, v)
    rs = (p != "ssh" && has("ssh." m)) ? ratio(v, R["ssh." m]) : ""
    rd = (vs_direct && p != "direct" && has("direct." m)) ? ratio(v, R["direct." m]) : ""
    if (rs != "" && rd != "") return s " (" rs " ssh, " rd " direct)"
    if (rs != "") return s " (" rs " ssh)"
    if (rd != "") return s " (" rd " direct)"
    return s
}

function row(label, m, fmt, vs_direct,    i, line) {
    line = "| " label
    for (i = 1; i <= npaths; i++) line = line " | " cell(P[i], m, fmt, vs_direct)
    print line " |"
}

# udprow: row() over direct, plain and tls only.
function udprow(label, m, fmt, vs_direct,    i, line, k) {
    line = "| " label
    for (i = 1; i <= 3; i++) {
        k = P[i] "." m
        if (!has(k)) { line = line " | " (has(P[i] ".status") ? "n/a (" R[P[i] ".status"] ")" : "n/a"); continue }
        line = line " | " sprintf(fmt, R[k])
        if (vs_direct && i > 1 && has("direct." m)) line = line " (" ratio(R[k], R["direct." m]) " direct)"
    }
    print line " |"
}

# crow(label, metric, fmt): a row of the cluster table.
function crow(label, m, fmt,    line, i, p, r) {
    line = "| " label
    for (i = 1; i <= 3; i++) {
        p = (i == 1) ? "tls" : (i == 2) ? "cluster1" : "cluster3"
        line = line " | " (has(p "." m) ? sprintf(fmt, R[p "." m]) : (has(p ".status") ? "n/a (" R[p ".status"] ")" : "n/a"))
    }
    r = (has("cluster1." m) && has("tls." m)) ? ratio(R["cluster1." m], R["tls." m]) : ""
    line = line " | " (r != "" ? r : "n/a")
    r = (has("cluster3." m) && has("cluster1." m)) ? ratio(R["cluster3." m], R["cluster1." m]) : ""
    print line " | " (r != "" ? r : "n/a") " |"
}

function verdict(ok) { return ok ? "**MET**" : "**NOT MET**" }

# target(text, ok, detail): one line of the targets list; ok = -1 means not measurable.
function target(text, ok, detail) {
    if (ok < 0) print "- " text ": **NOT MEASURED** (" detail ")"
    else print "- " text ": " verdict(ok) " (" detail ")"
}

BEGIN { FS = "=" }
{
    k = $1
    sub(/^[^=]*=/, "")
    R[k] = $0
}

END {
    npaths = 4
    P[1] = "direct"; L[1] = "direct"
    P[2] = "plain";  L[2] = plain_label
    P[3] = "tls";    L[3] = "tunnel, TLS"
    P[4] = "ssh";    L[4] = "ssh -R (chacha20-poly1305)"
    # Columns that are there only when the run had them.
    if (has("tls_noresume.bulk_up") || has("tls_noresume.status")) { P[++npaths] = "tls_noresume"; L[npaths] = "tunnel, TLS, resumption off (--resume-grace 0)" }
    if (has("tls_prev.bulk_up") || has("tls_prev.status")) { P[++npaths] = "tls_prev"; L[npaths] = "tunnel, TLS, earlier build (BENCH_PREV_BIN)" }
    # Sums of the two sides, when both exist.
    for (i = 1; i <= npaths; i++) {
        p = P[i]
        if (has(p ".rss_pub") && has(p ".rss_priv")) R[p ".rss_sum"] = R[p ".rss_pub"] + R[p ".rss_priv"]
        if (has(p ".cpu_pub") && has(p ".cpu_priv")) R[p ".cpu_sum"] = R[p ".cpu_pub"] + R[p ".cpu_priv"]
        if (has(p ".held")) R[p ".heldtxt"] = R[p ".held"] "/" hold_n (has(p ".hold_s") ? " opened in " R[p ".hold_s"] " s" : "") \
            (R[p ".hold_last10"] > 0 ? " (" R[p ".hold_first10"] "/s for the first 10%, " R[p ".hold_last10"] "/s for the last)" : "") (has(p ".alive") ? ", " R[p ".alive"] " still echo at end" : "")
    }

    print "# Tunnel benchmark"
    print ""
    print "- date: " date
    print "- machine: " host ", nproc " nproc ", load average at start / end " load0 " / " load
    print "- command: `" cmd "`"
    print "- wall time of the run: " elapsed " s"
    print ""
    line = "| figure"
    sep = "|---"
    for (i = 1; i <= npaths; i++) { line = line " | " L[i]; sep = sep "|---" }
    print line " |"
    print sep "|"
    row("bulk client→app, Mbit/s (iperf3)", "bulk_up", "%.0f", 1)
    row("bulk app→client, Mbit/s (iperf3 -R)", "bulk_down", "%.0f", 1)
    row("ping-pong 64 B p50, µs", "p50", "%.1f", 1)
    row("ping-pong 64 B p99, µs", "p99", "%.1f", 1)
    row("new connections/s (1-byte echo, 8 parallel)", "cps", "%.0f", 1)
    # held: no ratios, a count
    line = "| " hold_n " concurrent connections held (echo-checked)"
    for (i = 1; i <= npaths; i++) {
        p = P[i]
        line = line " | " (has(p ".heldtxt") ? R[p ".heldtxt"] : (has(p ".status") ? "n/a (" R[p ".status"] ")" : "n/a"))
    }
    print line " |"
    row("RSS per held connection, public side (sshd), KiB", "rss_pub", "%.1f", 0)
    row("RSS per held connection, private side (ssh), KiB", "rss_priv", "%.1f", 0)
    row("RSS per held connection, both sides, KiB", "rss_sum", "%.1f", 0)
    row("CPU s per GiB relayed, public side (sshd)", "cpu_pub", "%.2f", 0)
    row("CPU s per GiB relayed, private side (ssh)", "cpu_priv", "%.2f", 0)
    row("CPU s per GiB relayed, both sides", "cpu_sum", "%.2f", 0)
    print ""
    print "Ratios: the figure divided by the same figure of `ssh -R` / of the direct path (for"
    print "µs, KiB and CPU seconds lower is better). CPU is utime+stime from /proc/PID/stat of the"
    print "relay processes (sshd and all its children for ssh -R) while the iperf3 TCP transfers ran."
    print "RSS is the VmRSS growth of each side while the connections are held, divided by the"
    print "number held."
    print ""

    # UDP: its own table, for the paths that have UDP (ssh -R has none).
    if (has("direct.udp_p50") || has("plain.udp_p50") || has("tls.udp_p50")) {
        for (i = 1; i <= npaths; i++) {
            p = P[i]
            if (has(p ".bulk_flood") && has(p ".bulk_up")) R[p ".flood_keep"] = 100 * R[p ".bulk_flood"] / R[p ".bulk_up"]
            if (has(p ".bulk_flood_same") && has(p ".bulk_up")) R[p ".flood_keep_same"] = 100 * R[p ".bulk_flood_same"] / R[p ".bulk_up"]
        }
        print "UDP (`ssh -R` carries no UDP; ratios to the direct path):"
        print ""
        print "| figure | direct | " plain_label " | tunnel, TLS |"
        print "|---|---|---|---|"
        udprow("UDP ping-pong 64 B p50, µs", "udp_p50", "%.1f", 1)
        udprow("UDP ping-pong 64 B p99, µs", "udp_p99", "%.1f", 1)
        udprow("iperf3 -u at " R["udp.rate"] "bit/s (1400 B), received Mbit/s", "udp_mbit", "%.1f", 1)
        udprow("iperf3 -u loss, %", "udp_loss", "%.3f", 0)
        udprow("TCP bulk up under a UDP flood (the flooder under nice 19), Mbit/s", "bulk_flood", "%.0f", 1)
        udprow("... that, in % of the same path's bulk up without the flood", "flood_keep", "%.0f%%", 0)
        udprow("the flood's offered load, Mbit/s (" flood_size_note ")", "flood_mbit", "%.0f", 0)
        udprow("TCP bulk up under a UDP flood (the flooder at the same priority), Mbit/s", "bulk_flood_same", "%.0f", 1)
        udprow("... that, in % of the same path's bulk up without the flood", "flood_keep_same", "%.0f%%", 0)
        udprow("the flood's offered load, Mbit/s", "flood_mbit_same", "%.0f", 0)
        print ""
        for (i = 2; i <= 3; i++)
            if (has(P[i] ".flood_drops"))
                print "- " L[i] ": the flood's UDP app at the end of the run: " R[P[i] ".flood_drops"]
        print ""
    }

    print "Rounds (bulk, ping-pong, new connections; the table shows the median):"
    print ""
    for (i = 1; i <= npaths; i++) {
        p = P[i]
        if (!has(p ".bulk_up.rounds") && !has(p ".p50.rounds") && !has(p ".cps.rounds")) continue
        print "- " L[i] ": bulk up " R[p ".bulk_up.rounds"] "; bulk down " R[p ".bulk_down.rounds"] \
              "; p50 " R[p ".p50.rounds"] "; p99 " R[p ".p99.rounds"] "; conns/s " R[p ".cps.rounds"] \
              (has(p ".udp_p50.rounds") ? "; UDP p50 " R[p ".udp_p50.rounds"] "; iperf3 -u loss % " R[p ".udp_loss.rounds"] \
               "; bulk up under the flood " R[p ".bulk_flood.rounds"] \
               "; the same, flooder not niced " R[p ".bulk_flood_same.rounds"] : "")
    }
    print ""
    # Cluster (docs/CLUSTER.md): its own table, against the single TLS node.
    if (has("cluster1.bulk_up") || has("cluster1.status") || has("cluster3.bulk_up") || has("cluster3.status")) {
        print "## Cluster"
        print ""
        print "Both cluster paths are TLS tunnels like `tunnel, TLS`, one proxy_private given node 1 only."
        print "cluster1: one node with `--cluster` (a redis-server of its own, no persistence)."
        print "cluster3: nodes on 127.0.0.11-13 sharing one redis-server and node 1's certificate, behind"
        print "HAProxy (docs/haproxy-cluster.cfg as shipped: TCP mode, roundrobin, PROXY v2 from 127.0.0.3,"
        print "which the nodes --accept-proxy-from); the clients connect to HAProxy. Its public-side CPU is"
        print "the three nodes and HAProxy together. Ratios: cluster1 to the single TLS node (about 1.0"
        print "expected: the data path never touches Redis), cluster3 to cluster1."
        print ""
        print "| figure | tunnel, TLS | cluster, 1 node | cluster, 3 nodes + HAProxy | cluster1 / TLS | cluster3 / cluster1 |"
        print "|---|---|---|---|---|---|"
        crow("bulk client→app, Mbit/s (iperf3)", "bulk_up", "%.0f")
        crow("bulk app→client, Mbit/s (iperf3 -R)", "bulk_down", "%.0f")
        crow("ping-pong 64 B p50, µs", "p50", "%.1f")
        crow("ping-pong 64 B p99, µs", "p99", "%.1f")
        crow("new connections/s (1-byte echo, 8 parallel)", "cps", "%.0f")
        crow("CPU s per GiB relayed, public side (cluster3: 3 nodes + HAProxy)", "cpu_pub", "%.2f")
        crow("CPU s per GiB relayed, private side", "cpu_priv", "%.2f")
        print ""
        print "CPU per GiB: the TLS path's figure also counts the CPU of its UDP rounds (iperf3 -u, the"
        print "floods), which the cluster paths do not have: compare CPU between cluster1 and cluster3 only."
        print ""
        if (has("cluster3.cpu_split"))
            print "cluster3, CPU seconds of each relay over all the rounds: " R["cluster3.cpu_split"] ".\n"
        print "This machine cannot show scale-out: the three nodes, HAProxy, the private proxy, the"
        print "apps and the clients all share its " nproc " cores, and every client connection goes through"
        print "HAProxy, one more relay, so cluster3 pays an extra hop and gains no CPU. What cluster3 shows"
        print "is that an app registered once is served by all three nodes behind the balancer, and what"
        print "the extra hop costs here; more capacity needs nodes on machines of their own."
        print ""
        for (i = 1; i <= 2; i++) {
            p = (i == 1) ? "cluster1" : "cluster3"
            if (has(p ".bulk_up.rounds") || has(p ".p50.rounds") || has(p ".cps.rounds"))
                print "- rounds, " p ": bulk up " R[p ".bulk_up.rounds"] "; bulk down " R[p ".bulk_down.rounds"] \
                      "; p50 " R[p ".p50.rounds"] "; p99 " R[p ".p99.rounds"] "; conns/s " R[p ".cps.rounds"]
        }
        print ""
    }
    print "## Targets"
    print ""
    # Bulk: judged on both directions.
    if (has("tls.bulk_up") && has("tls.bulk_down") && has("ssh.bulk_up") && has("ssh.bulk_down")) {
        a = R["tls.bulk_up"] / R["ssh.bulk_up"]; b = R["tls.bulk_down"] / R["ssh.bulk_down"]
        target("bulk, TLS ≥ 1.5× ssh -R (both directions)", a >= 1.5 && b >= 1.5, sprintf("%.2f× and %.2f×", a, b))
    } else target("bulk, TLS ≥ 1.5× ssh -R (both directions)", -1, has("tls.status") ? R["tls.status"] : "missing figures")
    if (has("plain.bulk_up") && has("plain.bulk_down") && has("ssh.bulk_up") && has("ssh.bulk_down") && has("direct.bulk_up") && has("direct.bulk_down")) {
        a = R["plain.bulk_up"] / R["ssh.bulk_up"]; b = R["plain.bulk_down"] / R["ssh.bulk_down"]
        c = R["plain.bulk_up"] / R["direct.bulk_up"]; d = R["plain.bulk_down"] / R["direct.bulk_down"]
        target("bulk, plaintext ≥ 2× ssh -R and ≥ 40% of direct (both directions)",
               a >= 2 && b >= 2 && c >= 0.4 && d >= 0.4,
               sprintf("%.2f× / %.2f× ssh, %.0f%% / %.0f%% of direct", a, b, c * 100, d * 100))
    } else target("bulk, plaintext ≥ 2× ssh -R and ≥ 40% of direct", -1, has("plain.status") ? R["plain.status"] : "missing figures")
    for (j = 2; j <= 3; j++) {
        p = P[j]
        name = (p == "tls") ? "TLS" : "plaintext"
        if (has(p ".p50") && has(p ".p99") && has("ssh.p50") && has("ssh.p99"))
            target("ping-pong p50 and p99 ≤ ssh -R, " name,
                   R[p ".p50"] + 0 <= R["ssh.p50"] + 0 && R[p ".p99"] + 0 <= R["ssh.p99"] + 0,
                   sprintf("p50 %.1f vs %.1f µs, p99 %.1f vs %.1f µs", R[p ".p50"], R["ssh.p50"], R[p ".p99"], R["ssh.p99"]))
        else target("ping-pong p50 and p99 ≤ ssh -R, " name, -1, has(p ".status") ? R[p ".status"] : "missing figures")
        if (has(p ".cps") && has("ssh.cps"))
            target("new connections/s ≥ 10× ssh -R, " name, R[p ".cps"] >= 10 * R["ssh.cps"],
                   sprintf("%.1f×", R[p ".cps"] / R["ssh.cps"]))
        else target("new connections/s ≥ 10× ssh -R, " name, -1, has(p ".status") ? R[p ".status"] : "missing figures")
        if (has(p ".held") && has(p ".alive") && has(p ".rss_sum"))
            target(hold_n " concurrent all held, ≤ 64 KiB RSS per connection both sides together, " name,
                   R[p ".held"] == hold_n && R[p ".alive"] == hold_n && R[p ".rss_sum"] <= 64,
                   sprintf("%d held, %d still echo, %.1f KiB", R[p ".held"], R[p ".alive"], R[p ".rss_sum"]))
        else target(hold_n " concurrent all held, ≤ 64 KiB RSS per connection, " name, -1,
                    has(p ".status") ? R[p ".status"] : (has(p ".held") ? R[p ".held"] " held" : "missing figures"))
    }
    if (has("tls_prev.bulk_up") && has("tls_prev.bulk_down") && has("tls.bulk_up") && has("tls.bulk_down")) {
        a = R["tls.bulk_up"] / R["tls_prev.bulk_up"]; b = R["tls.bulk_down"] / R["tls_prev.bulk_down"]
        target("bulk, TLS ≥ 80% of the earlier build (both directions)", a >= 0.8 && b >= 0.8,
               sprintf("%.0f%% and %.0f%%", a * 100, b * 100))
    }
    if (has("tls_noresume.bulk_up") && has("tls_noresume.bulk_down") && has("tls.bulk_up") && has("tls.bulk_down")) {
        a = R["tls.bulk_up"] / R["tls_noresume.bulk_up"]; b = R["tls.bulk_down"] / R["tls_noresume.bulk_down"]
        c = has("tls.p50") && has("tls_noresume.p50") ? R["tls.p50"] / R["tls_noresume.p50"] : 0
        target("resumption on costs ≤ 5% of bulk and ping-pong p50 (against off, same run)",
               a >= 0.95 && b >= 0.95 && c > 0 && c <= 1.05,
               sprintf("bulk %.0f%% / %.0f%% of off, p50 %.0f%% of off", a * 100, b * 100, c * 100))
    }
    for (j = 2; j <= 3; j++) {
        p = P[j]
        name = (p == "tls") ? "TLS" : "plaintext"
        if (has(p ".udp_p50") && has(p ".p50"))
            target("UDP ping-pong p50 ≤ 1.2× the tunnel's TCP p50, " name, R[p ".udp_p50"] <= 1.2 * R[p ".p50"],
                   sprintf("%.1f vs %.1f µs: %.2f×", R[p ".udp_p50"], R[p ".p50"], R[p ".udp_p50"] / R[p ".p50"]))
        if (has(p ".udp_loss") && has("direct.udp_loss"))
            target("iperf3 -u at " R["udp.rate"] "bit/s: < 1% loss through the tunnel where direct loses " R["direct.udp_loss"] "%, " name,
                   R[p ".udp_loss"] < 1, sprintf("%.3f%% lost", R[p ".udp_loss"]))
        if (has(p ".flood_keep"))
            target("TCP keeps ≥ 50% of its bulk speed under a UDP flood on the same tunnel (flooder niced), " name,
                   R[p ".flood_keep"] >= 50, sprintf("%.0f%%; direct path under the same flood: %s; flooder not niced: %s", R[p ".flood_keep"],
                   has("direct.flood_keep") ? sprintf("%.0f%%", R["direct.flood_keep"]) : "n/a",
                   has(p ".flood_keep_same") ? sprintf("%.0f%%", R[p ".flood_keep_same"]) : "n/a"))
    }
    if (has("resume.reset_ms"))
        print "- outages (TLS, one open connection): reset of the tunnel to the first byte through it again: " \
              R["resume.reset_ms"] " ms median, " R["resume.reset_max_ms"] " ms at most; a 17 s silent cut, from the link's return to the first byte: " R["resume.stall_ms"] " ms"
    if (hold_n != 10000) print "- (the hold test ran with " hold_n " connections, not 10,000: targets on it are indicative)"

    nn = 0
    while ((getline l < notes_file) > 0) {
        if (nn++ == 0) { print ""; print "## Notes"; print "" }
        if (l ~ /^    /) print l
        else print "- " l
    }
}
