"""Configuration files (--config), token files, reload on SIGHUP, and the
service-facing behaviour (journal priority prefixes, sd_notify readiness,
summaries of repeated log lines, hints for a wrong port).

Every key of --help is tried in a config file; bad lines must be reported as
FILE:LINE with the key; the command line wins over the file. SIGHUP with a
connection running changes the log level and a limit in place and the
connection carries on. Nothing here measures time: every wait is bounded and
looks for behaviour (a log line, an answer)."""
import os
import re
import signal
import socket
import subprocess
import threading

import harness
from harness import ProxyTest, SLOW, free_port, connect, recv_exact
from helpers import apps


def help_options(text):
    """The long options --help lists, without the leading dashes."""
    return sorted(set(re.findall(r"(?m)^\s+--([a-z][a-z0-9-]*)", text)))


class Traffic:
    """Echo round trips on an open connection, one after another, until stop()
    (which says what went wrong, if anything)."""

    def __init__(self, sock):
        self.sock, self.count, self.errors = sock, 0, []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        try:
            while not self.stopping.is_set():
                data = os.urandom(4096)
                self.sock.sendall(data)
                if recv_exact(self.sock, len(data)) != data:
                    self.errors.append("echo changed the bytes")
                    return
                self.count += 1
        except Exception as e:  # noqa: BLE001 (reported by stop)
            self.errors.append(repr(e))

    def wait_more(self, n, what):
        start = self.count
        harness.wait_until(lambda: self.count > start + n or self.errors, 10 * SLOW, what)
        return not self.errors

    def stop(self):
        self.stopping.set()
        self.thread.join(10 * SLOW)
        return self.errors


class ConfigTest(ProxyTest):
    def run_bin(self, name, args, env=None):
        e = dict(os.environ, **harness.SAN_ENV)
        e.pop("NAT_TOKEN", None)
        e.update(env or {})
        p = subprocess.run([self.bin(name)] + args, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=20 * SLOW, env=e)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        with open(self._log_path(name + "-cli"), "w") as f:
            f.write("# %s %s\n# exit %d\n%s" % (name, " ".join(args), p.returncode, out))
        for pat in harness.SANITIZER_PATTERNS:
            self.assertNotIn(pat, out, "%s: sanitizer report:\n%s" % (name, out))
        return p.returncode, out

    def write(self, name, text, mode=0o644):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def public_conf(self, extra=""):
        self.tunnel_port = free_port()
        self.web_port = free_port()
        self.state_dir = os.path.join(self.tmp, "state")
        return ("# proxy_public test config\n"
                "tunnel-port = %d\nweb-port = %d\nbind = 127.0.0.1\nstate-dir = %s\n"
                % (self.tunnel_port, self.web_port, self.state_dir)) + extra

    def spawn_public(self, conf_path, args=(), env=None):
        argv = [self.bin("proxy_public"), "--config", conf_path] + list(args) + \
            harness.EXTRA_ARGS
        p = self.spawn("public", argv, dict({"NAT_TOKEN": None}, **(env or {})))
        self.public = p
        return p

    # ------------------------------------------------------------ parsing
    def test_every_help_option_has_a_key(self):
        """Each option of --help is a key of the config file: a bad value for
        it is refused with FILE:LINE and the key (or, for those that take any
        text, the file is accepted and the value used)."""
        bad_values = {"max-conns": "many", "max-conns-per-app": "0",
                      "max-conns-per-private": "-1", "allow-ports": "1-2-3",
                      "log-level": "loud", "bind": "nowhere", "tunnel-port": "99999",
                      "web-port": "0", "web-https": "perhaps", "insecure-plaintext": "perhaps",
                      "fingerprint": "AB:CD", "name": "bad name", "register": "bogus",
                      "allow": "10.0.0.0/99:1", "host": None, "max-udp-sessions": "0",
                      "max-udp-sessions-per-app": "x", "resume-grace": "3601",
                      "resume-memory": "0", "ftp-ports": "30000", "public-address": "::1",
                      "accept-proxy-from": "127.0.0.1/24", "cluster": "http://127.0.0.1:6379",
                      "node-name": "bad name", "advertise": "nohost"}
        free_text = {"token", "token-file", "state-dir", "cert", "key", "known-hosts", "host"}
        for prog, base in (("proxy_public", "tunnel-port = 6300\nweb-port = 6301\n"),
                           ("proxy_private", "host = 127.0.0.1\ntunnel-port = 6300\n")):
            rc, out = self.run_bin(prog, ["--help"])
            opts = [o for o in help_options(out) if o not in ("help", "version", "config")]
            self.assertGreater(len(opts), 8, out)
            keys = opts + (["tunnel-port", "web-port"] if prog == "proxy_public"
                           else ["host", "tunnel-port"])
            for key in keys:
                if key in free_text:
                    continue
                v = bad_values.get(key)
                self.assertIsNotNone(v, "%s: no bad value known for key %r: add one to the "
                                     "test" % (prog, key))
                path = self.write("k.conf", "# one bad key\n" + base + "%s = %s\n" % (key, v))
                rc, msg = self.run_bin(prog, ["--config", path])
                self.assertEqual(rc, 2, "%s: %s = %s accepted:\n%s" % (prog, key, v, msg))
                self.assertIn("%s:4: %s" % (path, key), msg,
                              "%s: the message does not name file:line and key %r:\n%s"
                              % (prog, key, msg))
            # The free-text keys: known (no "unknown key") when given.
            for key in free_text & set(keys):
                path = self.write("k.conf", base + "%s = /nonexistent/x\n" % key)
                rc, msg = self.run_bin(prog, ["--config", path, "--help"])
                self.assertEqual(rc, 0, msg)
                rc, msg = self.run_bin(prog, ["--config", path, "--version"])
                self.assertEqual(rc, 0, msg)
                path = self.write("k.conf", base + "no-such-key-%s = 1\n" % key)
                rc, msg = self.run_bin(prog, ["--config", path])
                self.assertIn("%s:3: unknown key 'no-such-key-%s'" % (path, key), msg)

    def test_bad_lines_named_by_file_and_line(self):
        cases = [("tunnel-port = 6300\nweb-port = 6301\n\njust words\n", ":4: expected '='"),
                 ("tunnel-port = 6300\n--web-port = 6301\n", ":2: expected 'key = value'"),
                 ("# ok\nmax-conns =\n", ":2: max-conns needs a value"),
                 ("web-port = 6301\nconfig = /etc/other.conf\n", ":2: unknown key 'config'"),
                 ("tunnel-port = 6300\nweb-port = 6301\nlog-level = \x01\n",
                  ":3: a control byte"),
                 ("x" * 2000 + " = 1\n", ":1: line longer than 1024")]
        for text, want in cases:
            path = self.write("bad.conf", text)
            rc, out = self.run_bin("proxy_public", ["--config", path])
            self.assertEqual(rc, 2, out)
            self.assertIn(path + want, out)
        rc, out = self.run_bin("proxy_public", ["--config", os.path.join(self.tmp, "none.conf")])
        self.assertEqual(rc, 2, out)
        self.assertIn("none.conf: No such file", out)
        # A token in a file every user may read is refused, without showing it.
        path = self.write("tok.conf", "tunnel-port = 6300\nweb-port = 6301\ntoken = s3cr3t\n",
                          0o644)
        rc, out = self.run_bin("proxy_public", ["--config", path])
        self.assertEqual(rc, 2, out)
        self.assertIn(":3: token", out)
        self.assertIn("chmod 640", out)
        self.assertNotIn("s3cr3t", out)

    def test_command_line_wins(self):
        echo = self.server(apps.EchoServer)
        conf = self.write("p.conf", self.public_conf(
            "log-level = error\nmax-conns-per-app = 1\ntoken = from-the-file\n"), 0o600)
        other_web = free_port()
        pub = self.spawn_public(conf, ["--log-level", "info", "--token", self.token,
                                       str(self.tunnel_port), str(other_web)])
        self.web_port = other_web
        pub.wait_log(r"ev=ready .*web_port=%d" % other_web, 20 * SLOW)
        self.wait_api_up(pub)
        # The private: the file registers "filed", the command line "cli".
        a1, a2 = free_port(), free_port()
        pconf = self.write("h.conf", "host = 127.0.0.1\ntunnel-port = %d\n"
                           "register = filed:%d:127.0.0.1:%d\nname = fromfile\n"
                           "token = wrong\nknown-hosts = %s\n"
                           % (self.tunnel_port, a1, echo.port,
                              os.path.join(self.tmp, "kh")), 0o600)
        priv = self.spawn("private-home", [self.bin("proxy_private"), "--config", pconf,
                                           "--name", "home", "--token", self.token,
                                           "--register", "cli:%d:127.0.0.1:%d" % (a2, echo.port)]
                          + harness.EXTRA_ARGS)
        body = self.wait_online(apps=["cli"])
        self.assertIsNone(self.find(body["apps"], "filed"),
                          "the file's --register was kept beside the command line's: %s" % body)
        self.echo_roundtrip(a2)
        harness.wait_until(lambda: self.find(self.list()["apps"], "cli")["active_connections"]
                           == 0, 10 * SLOW, "the first connection closed")
        # The file's max-conns-per-app = 1 holds (not overridden): a second
        # connection while one is open is refused.
        with connect(a2) as s1:
            s1.sendall(b"x")
            recv_exact(s1, 1)
            with connect(a2) as s2:
                self.assertTrue(harness.closed_by_peer(s2, 10 * SLOW),
                                "max-conns-per-app = 1 from the file not applied")
        self.assertTrue(priv.alive())

    def test_token_file(self):
        echo = self.server(apps.EchoServer)
        tok = self.write("token", self.token + "\n", 0o644)
        conf = self.write("p.conf", self.public_conf("token-file = %s\n" % tok))
        rc, out = self.run_bin("proxy_public", ["--config", conf])
        self.assertEqual(rc, 2, out)
        self.assertIn("token file %s is open to other users" % tok, out)
        self.assertIn("chmod 600", out)
        self.assertNotIn(self.token, out)
        os.chmod(tok, 0o600)
        pub = self.spawn_public(conf)
        pub.wait_log(r"ev=ready", 20 * SLOW)
        self.wait_api_up(pub)
        self.assertNotIn(self.token, pub.output(), "a token from a file is printed")
        app = free_port()
        priv = self.spawn("private-home", [self.bin("proxy_private"), "127.0.0.1",
                                           str(self.tunnel_port), "--name", "home",
                                           "--token-file", tok, "--known-hosts",
                                           os.path.join(self.tmp, "kh"), "--register",
                                           "e:%d:127.0.0.1:%d" % (app, echo.port)]
                          + harness.EXTRA_ARGS)
        self.wait_online(apps=["e"])
        self.echo_roundtrip(app)
        with open("/proc/%d/cmdline" % priv.pid, "rb") as f:
            self.assertNotIn(self.token.encode(), f.read())

    # ------------------------------------------------------------ reload
    def test_sighup_changes_level_and_limit_with_traffic_running(self):
        echo = self.server(apps.EchoServer)
        base = self.public_conf("token = %s\n" % self.token)
        conf = self.write("p.conf", base + "log-level = info\nmax-conns-per-app = 100\n", 0o600)
        pub = self.spawn_public(conf)
        pub.wait_log(r"ev=ready", 20 * SLOW)
        self.wait_api_up(pub)
        app = free_port()
        self.start_private(register=["e:%d:127.0.0.1:%d" % (app, echo.port)])
        self.wait_online(apps=["e"])
        held = connect(app)
        self.addCleanup(held.close)
        # Traffic on the held connection while the reloads happen.
        traffic = Traffic(held)
        traffic.wait_more(10, "traffic flowing")
        self.assertNotIn("ev=client_connected", pub.output(), "debug lines at info level")

        self.write("p.conf", base + "log-level = debug\nmax-conns-per-app = 1\n", 0o600)
        mark = len(pub.output())
        pub.popen.send_signal(signal.SIGHUP)
        pub.wait_log(r"ev=reload_changed key=log-level old=info new=debug", 10 * SLOW, mark)
        pub.wait_log(r"ev=reload_changed key=limits max_conns=20000 max_conns_per_app=1 ",
                     10 * SLOW, mark)
        pub.wait_log(r"ev=reloaded file=\S+ changed=2 needs_restart=0", 10 * SLOW, mark)
        # The new limit: one connection (the held one) is all this app may have.
        with connect(app) as s2:
            self.assertTrue(harness.closed_by_peer(s2, 10 * SLOW),
                            "max-conns-per-app = 1 not applied by the reload")
        pub.wait_log(r"ev=client_refused app=e .*--max-conns-per-app", 10 * SLOW, mark)
        traffic.wait_more(10, "traffic still flowing after the reload")

        # A port change needs a restart: said in the log, nothing else moves.
        self.write("p.conf", base.replace("web-port = %d" % self.web_port,
                                          "web-port = %d" % free_port())
                   + "log-level = debug\nmax-conns-per-app = 100\n", 0o600)
        mark = len(pub.output())
        pub.popen.send_signal(signal.SIGHUP)
        pub.wait_log(r"ev=reload_needs_restart key=web-port", 10 * SLOW, mark)
        pub.wait_log(r"ev=reloaded file=\S+ changed=1 needs_restart=1", 10 * SLOW, mark)
        # The debug level is on: a new client gets its line.
        self.echo_roundtrip(app)
        pub.wait_log(r"ev=client_connected app=e", 10 * SLOW, mark)

        # A broken file changes nothing.
        self.write("p.conf", base + "max-conns-per-app = lots\n", 0o600)
        mark = len(pub.output())
        pub.popen.send_signal(signal.SIGHUP)
        pub.wait_log(r"ev=reload_failed err=\"\S+p\.conf:\d+: max-conns-per-app 'lots'", 10 * SLOW,
                     mark)
        self.echo_roundtrip(app)
        self.assertEqual(traffic.stop(), [], "the running connection was disturbed by the reloads")
        self.assertTrue(pub.alive())

    def test_sighup_private_allow_and_register(self):
        echo = self.server(apps.EchoServer)
        self.start_public()
        app, app2 = free_port(), free_port()
        kh = os.path.join(self.tmp, "kh")
        base = "host = 127.0.0.1\ntunnel-port = %d\nname = home\nknown-hosts = %s\n" % (
            self.tunnel_port, kh)
        tok = self.write("tok", self.token, 0o600)
        conf = self.write("h.conf", base + "token-file = %s\nregister = e:%d:127.0.0.1:%d\n"
                          "allow = 192.0.2.1:80\nlog-level = info\n" % (tok, app, echo.port))
        priv = self.spawn("private-home", [self.bin("proxy_private"), "--config", conf]
                          + harness.EXTRA_ARGS)
        self.wait_online(apps=["e"])
        self.echo_roundtrip(app)  # its own --register target is allowed
        # An app registered from the API to a loopback target: not allowed by
        # the file's allow rule (which replaced the loopback default), which
        # the private told the public side: refused, naming the rule.
        echo2 = self.server(apps.EchoServer)
        resp = self.register("api", app2, echo2.port, expect=422)
        self.assertIn("--allow 127.0.0.1:%d" % echo2.port, resp["error"])
        held = connect(app)
        self.addCleanup(held.close)
        traffic = Traffic(held)  # runs through the reloads below
        traffic.wait_more(10, "traffic flowing")

        new_port = free_port()
        self.write("h.conf", base + "token-file = %s\nregister = e:%d:127.0.0.1:%d\n"
                   "register = new:%d:127.0.0.1:%d\nallow = 127.0.0.0/8:1-65535\n"
                   "log-level = debug\nmax-conns = 50\n"
                   % (tok, app, echo.port, new_port, echo.port))
        mark = len(priv.output())
        priv.popen.send_signal(signal.SIGHUP)
        priv.wait_log(r"ev=reload_changed key=log-level old=info new=debug", 10 * SLOW, mark)
        priv.wait_log(r"ev=reload_changed key=max-conns old=10000 new=50", 10 * SLOW, mark)
        priv.wait_log(r"ev=reload_changed key=allow rules=\"127.0.0.0/8:1-65535\"", 10 * SLOW,
                      mark)
        priv.wait_log(r"ev=reload_apps_changed added=new removed=none msg=\"on the running "
                      r"tunnel", 10 * SLOW, mark)
        priv.wait_log(r"ev=reloaded file=\S+ changed=4 needs_restart=0", 10 * SLOW, mark)
        # The new app is registered on the running tunnel (APPS), no reconnect...
        priv.wait_log(r"ev=apps_applied results=1", 10 * SLOW, mark)
        self.wait_online(apps=["new"])
        self.echo_roundtrip(new_port)
        self.assertEqual(self.find(self.list()["privates"], "home")["reconnects"], 0)
        # ... the new allowlist is in force, at home and on the public side...
        self.register("api", app2, echo2.port)
        self.wait_online(apps=["api"])
        self.echo_roundtrip(app2)
        # ... and the transfer that was running carries on, undisturbed.
        traffic.wait_more(10, "traffic still flowing after the reload")
        self.assertEqual(traffic.stop(), [], "the running connection was disturbed by the reload")
        # An app taken out of the config is unregistered, one changed moves.
        moved = free_port()
        self.write("h.conf", base + "token-file = %s\nregister = e:%d:127.0.0.1:%d\n"
                   "allow = 127.0.0.0/8:1-65535\nlog-level = debug\nmax-conns = 50\n"
                   % (tok, moved, echo.port))
        mark = len(priv.output())
        priv.popen.send_signal(signal.SIGHUP)
        priv.wait_log(r"ev=reload_apps_changed added=e removed=e,new msg=\"on the running "
                      r"tunnel", 10 * SLOW, mark)
        priv.wait_log(r"ev=apps_applied results=3", 10 * SLOW, mark)
        self.assertIsNone(self.find(self.list()["apps"], "new"))
        self.assertEqual(self.find(self.list()["apps"], "e")["public_port"], moved)
        self.echo_roundtrip(moved)
        self.assertEqual(self.find(self.list()["privates"], "home")["reconnects"], 0)
        # A changed name needs a restart.
        self.write("h.conf", base.replace("name = home", "name = other") +
                   "token-file = %s\nregister = e:%d:127.0.0.1:%d\n" % (tok, app, echo.port))
        mark = len(priv.output())
        priv.popen.send_signal(signal.SIGHUP)
        priv.wait_log(r"ev=reload_needs_restart key=name", 10 * SLOW, mark)
        self.assertTrue(priv.alive())

    # ------------------------------------------------------------ service
    def test_journal_prefixes_and_sd_notify(self):
        sock_path = os.path.join(self.tmp, "notify")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(sock_path)
        ns.settimeout(20 * SLOW)
        self.addCleanup(ns.close)
        conf = self.write("p.conf", self.public_conf("token = %s\n" % self.token), 0o600)
        log_path = self._log_path("public")
        open(log_path, "ab").close()
        st = os.stat(log_path)
        argv = [self.bin("proxy_public"), "--config", conf] + harness.EXTRA_ARGS
        p = harness.Proc("public", argv, log_path,
                         {"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino),
                          "NOTIFY_SOCKET": sock_path, "NAT_TOKEN": None})
        self.procs.append(p)
        self.public = p
        self.assertEqual(ns.recv(256), b"READY=1")
        p.wait_log(r"ev=ready", 10 * SLOW)
        lines = [l for l in p.output().splitlines() if "lvl=" in l]
        self.assertTrue(lines)
        for l in lines:
            m = re.match(r"<(\d)>ts=\S+ lvl=(\w+) ", l)
            self.assertTrue(m, "a log line without its priority prefix: %r" % l)
            self.assertEqual({"error": "3", "warn": "4", "info": "6", "debug": "7"}[m.group(2)],
                             m.group(1), l)
        p.popen.send_signal(signal.SIGHUP)
        self.assertTrue(ns.recv(256).startswith(b"RELOADING=1\nMONOTONIC_USEC="))
        self.assertEqual(ns.recv(256), b"READY=1")
        self.assertEqual(p.stop(), 0)
        self.assertEqual(ns.recv(256), b"STOPPING=1")
        # A JOURNAL_STREAM that is not our stderr: no prefixes.
        conf2 = self.write("p2.conf", self.public_conf("token = %s\n" % self.token), 0o600)
        p2 = self.spawn_public(conf2, env={"JOURNAL_STREAM": "1:2"})
        p2.wait_log(r"ev=ready", 20 * SLOW)
        self.assertRegex(p2.output(), r"(?m)^ts=\S+ lvl=info ev=ready")

    def test_refused_clients_summarised(self):
        """A flood of clients while the private is offline: the first is
        logged, the rest counted into one line per app and reason."""
        self.start_public()
        self.start_private()
        self.wait_online()
        app = free_port()
        self.register("web", app, free_port())
        self.procs[-1].stop()
        self.wait_offline()
        n = 300
        for _ in range(n):
            with connect(app) as s:
                harness.closed_by_peer(s, 5 * SLOW)
        full = re.findall(r"ev=client_refused app=web client=\S+ reason=\"private proxy offline\"",
                          self.public.output())
        self.assertGreaterEqual(len(full), 1, "the first refusal was not logged")
        self.public.wait_log(r"ev=client_refused app=web reason=\"private proxy offline\" "
                             r"repeated=(\d+) in_ms=\d+", 20 * SLOW)

        def counted():
            out = self.public.output()
            return len(re.findall(r"ev=client_refused app=web client=", out)) + \
                sum(int(x) for x in re.findall(r"ev=client_refused app=web reason=\"private "
                                               r"proxy offline\" repeated=(\d+)", out))
        harness.wait_until(lambda: counted() == n, 20 * SLOW,
                           "the logged and counted refusals adding up to %d" % n)
        self.assertLess(len(full), 10, "%d lines for %d refused clients" % (len(full), n))

    def test_private_sigterm_no_reconnecting_line(self):
        self.start_public()
        priv = self.start_private()
        self.wait_online()
        self.assertEqual(priv.stop(), 0)
        out = priv.output()
        i = out.find("ev=stopping")
        self.assertGreaterEqual(i, 0, out)
        self.assertNotIn("ev=reconnecting", out[i:], "reconnecting logged after SIGTERM")

    def test_hints_for_the_web_port_and_tls_on_one_side(self):
        self.start_public()
        kh = os.path.join(self.tmp, "kh")
        if harness.TLS:
            p = self.spawn("private-web", [self.bin("proxy_private"), "127.0.0.1",
                                           str(self.web_port), "--token", self.token,
                                           "--known-hosts", kh])
            p.wait_log(r"ev=handshake_failed .*hint=\"the peer answered in HTTP: this is "
                       r"probably proxy_public's WEB_PORT", 20 * SLOW)
            p.stop()
            # Plaintext at home only: the home log says so too.
            p = self.spawn("private-plain", [self.bin("proxy_private"), "127.0.0.1",
                                             str(self.tunnel_port), "--token", self.token,
                                             "--insecure-plaintext", "--known-hosts", kh])
            p.wait_log(r"ev=handshake_failed .*hint=\"[^\"]*--insecure-plaintext must be given "
                       r"on both sides", 30 * SLOW)
            p.stop()
        p = self.spawn("private-web-plain", [self.bin("proxy_private"), "127.0.0.1",
                                             str(self.web_port), "--token", self.token,
                                             "--insecure-plaintext", "--known-hosts", kh])
        p.wait_log(r"ev=handshake_failed .*hint=\"the peer answered in HTTP", 20 * SLOW)


if __name__ == "__main__":
    harness.main()
