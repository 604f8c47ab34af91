"""GET /metrics on the web port: Prometheus text format (version 0.0.4), checked strictly,
and counters checked against traffic this test sends itself.

    python3 tests/test_metrics.py            (or through tests/run.sh)

The parser below is the format's grammar, written out: HELP and TYPE lines, sample lines
with labels, escapes, float values; one group per metric family; no duplicate series.
ParserTest checks the parser on hand-written texts and needs no binaries.
"""
import http.client
import math
import os
import re
import socket
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import ProxyTest, apps, connect, free_port, recv_exact, wait_until, SLOW  # noqa: E402

# --------------------------------------------------------------------------------------
# The text format.

METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FLOAT_RE = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|Inf|inf|NaN|nan)")
TIMESTAMP_RE = re.compile(r"-?[0-9]+")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class FormatError(AssertionError):
    pass


class Family:
    def __init__(self, name):
        self.name = name
        self.type = None
        self.help = None
        self.samples = []            # (sample name, {label: value}, float value)

    def value(self, **labels):
        """The value of the sample whose labels are exactly `labels` (None: absent)."""
        for _, lab, v in self.samples:
            if lab == labels:
                return v
        return None


def _unescape(text, allowed, lineno, what):
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                raise FormatError("line %d: %s ends with a lone backslash" % (lineno, what))
            n = text[i + 1]
            if n not in allowed:
                raise FormatError("line %d: %s has the bad escape \\%s" % (lineno, what, n))
            out.append(allowed[n])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_float(text, lineno):
    if not FLOAT_RE.fullmatch(text):
        raise FormatError("line %d: %r is not a sample value" % (lineno, text))
    return float(text)


def _parse_labels(line, i, lineno):
    """Parses `{name="value",...}` starting at line[i] == '{'. Returns (labels, next i)."""
    labels = {}
    i += 1
    while True:
        if i >= len(line):
            raise FormatError("line %d: unterminated label set" % lineno)
        if line[i] == "}":
            return labels, i + 1
        m = LABEL_NAME_RE.match(line, i)
        if not m:
            raise FormatError("line %d: bad label name at column %d" % (lineno, i + 1))
        name = m.group(0)
        i = m.end()
        if line[i:i + 2] != '="':
            raise FormatError("line %d: label %s lacks =\"value\"" % (lineno, name))
        i += 2
        j = i
        while True:
            if j >= len(line):
                raise FormatError("line %d: unterminated value of label %s" % (lineno, name))
            if line[j] == "\\":
                j += 2
                continue
            if line[j] == '"':
                break
            j += 1
        value = _unescape(line[i:j], {"\\": "\\", '"': '"', "n": "\n"}, lineno,
                          "the value of label " + name)
        if name in labels:
            raise FormatError("line %d: label %s given twice" % (lineno, name))
        if name.startswith("__"):
            raise FormatError("line %d: label name %s is reserved" % (lineno, name))
        labels[name] = value
        i = j + 1
        if i < len(line) and line[i] == ",":
            i += 1
        elif i < len(line) and line[i] == "}":
            continue
        else:
            raise FormatError("line %d: expected , or } after label %s" % (lineno, name))


def parse_metrics(text):
    """Parses a Prometheus text exposition strictly; returns {family name: Family}."""
    if text and not text.endswith("\n"):
        raise FormatError("the exposition does not end with a newline")
    families = {}
    order = []            # families in the order their group started
    current = None        # family of the group being read
    finished = set()      # families whose group has ended
    series = set()

    def family_of(sample_name):
        for suffix in ("_bucket", "_sum", "_count"):
            if sample_name.endswith(suffix):
                base = families.get(sample_name[:-len(suffix)])
                if base is not None and base.type in ("histogram", "summary"):
                    if suffix == "_bucket" and base.type != "histogram":
                        break
                    return base
        return families.get(sample_name)

    def enter(fam, lineno):
        nonlocal current
        if current is fam:
            return
        if fam.name in finished:
            raise FormatError("line %d: metric %s appears in two separate groups"
                              % (lineno, fam.name))
        if current is not None:
            finished.add(current.name)
        current = fam
        order.append(fam.name)

    for lineno, line in enumerate(text.split("\n")[:-1] if text else [], 1):
        if line.strip() == "":
            continue
        if line.startswith("#"):
            parts = line[1:].lstrip(" \t").split(None, 2) if line[1:2] in (" ", "\t") else []
            if len(parts) >= 2 and parts[0] in ("HELP", "TYPE"):
                kind, name = parts[0], parts[1]
                rest = parts[2] if len(parts) > 2 else ""
                if not METRIC_NAME_RE.fullmatch(name):
                    raise FormatError("line %d: bad metric name %r in %s" % (lineno, name, kind))
                fam = families.get(name)
                if fam is None:
                    fam = families[name] = Family(name)
                if fam.samples:
                    raise FormatError("line %d: %s of %s comes after its samples"
                                      % (lineno, kind, name))
                enter(fam, lineno)
                if kind == "HELP":
                    if fam.help is not None:
                        raise FormatError("line %d: second HELP for %s" % (lineno, name))
                    fam.help = _unescape(rest, {"\\": "\\", "n": "\n"}, lineno, "HELP of " + name)
                else:
                    if fam.type is not None:
                        raise FormatError("line %d: second TYPE for %s" % (lineno, name))
                    if rest.strip() not in TYPES:
                        raise FormatError("line %d: unknown type %r for %s" % (lineno, rest, name))
                    fam.type = rest.strip()
            continue          # any other comment is allowed
        m = METRIC_NAME_RE.match(line)
        if not m:
            raise FormatError("line %d: not a sample line: %r" % (lineno, line))
        sname = m.group(0)
        i = m.end()
        labels = {}
        if i < len(line) and line[i] == "{":
            labels, i = _parse_labels(line, i, lineno)
        rest = line[i:]
        if not rest[:1] in (" ", "\t"):
            raise FormatError("line %d: no blank between the metric and its value: %r"
                              % (lineno, line))
        fields = rest.split()
        if len(fields) not in (1, 2):
            raise FormatError("line %d: expected a value and an optional timestamp: %r"
                              % (lineno, line))
        value = _parse_float(fields[0], lineno)
        if len(fields) == 2 and not TIMESTAMP_RE.fullmatch(fields[1]):
            raise FormatError("line %d: bad timestamp %r" % (lineno, fields[1]))
        fam = family_of(sname)
        if fam is None:
            fam = families[sname] = Family(sname)
        enter(fam, lineno)
        key = (sname, tuple(sorted(labels.items())))
        if key in series:
            raise FormatError("line %d: series %s%s given twice" % (lineno, sname, labels))
        series.add(key)
        if fam.type == "counter" and (math.isnan(value) or value < 0):
            raise FormatError("line %d: counter %s has the value %r" % (lineno, sname, value))
        fam.samples.append((sname, labels, value))
    return families


# --------------------------------------------------------------------------------------
# What the server must expose (docs: the metrics issue).

APP_COUNTERS = ("nat_app_bytes_in_total", "nat_app_bytes_out_total",
                "nat_app_connections_total", "nat_app_connection_failures_total")
APP_GAUGES = ("nat_app_connections_active",)
PRIVATE_COUNTERS = ("nat_private_reconnects_total",)
PRIVATE_GAUGES = ("nat_private_online",)
PROCESS_GAUGES = ("process_threads", "process_open_fds")
REQUIRED = APP_COUNTERS + APP_GAUGES + PRIVATE_COUNTERS + PRIVATE_GAUGES + PROCESS_GAUGES + (
    "process_uptime_seconds",)


class ParserTest(unittest.TestCase):
    """The strict parser itself, on hand-written expositions (no binaries needed)."""

    GOOD = (
        '# HELP nat_app_bytes_in_total Bytes from clients to the app.\n'
        '# TYPE nat_app_bytes_in_total counter\n'
        'nat_app_bytes_in_total{app="web"} 12\n'
        'nat_app_bytes_in_total{app="a\\"b\\\\c\\n"} 1.5e3\n'
        '# HELP process_threads Threads.\n'
        '# TYPE process_threads gauge\n'
        'process_threads 7\n'
        '# a comment\n'
        'process_uptime_seconds 3.25 1700000000000\n'
        'x_inf{a="1",} +Inf\n'
    )

    def test_good(self):
        f = parse_metrics(self.GOOD)
        self.assertEqual(f["nat_app_bytes_in_total"].type, "counter")
        self.assertEqual(f["nat_app_bytes_in_total"].help, "Bytes from clients to the app.")
        self.assertEqual(f["nat_app_bytes_in_total"].value(app="web"), 12)
        self.assertEqual(f["nat_app_bytes_in_total"].value(app='a"b\\c\n'), 1500)
        self.assertEqual(f["process_threads"].value(), 7)
        self.assertEqual(f["process_uptime_seconds"].type, None)
        self.assertEqual(f["x_inf"].value(a="1"), math.inf)

    def test_histogram_suffixes(self):
        f = parse_metrics('# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\n'
                          'h_sum 3\nh_count 2\n')
        self.assertEqual(len(f["h"].samples), 4)

    def test_bad(self):
        bad = {
            "no final newline": "a 1",
            "bad name": "1a 1\n",
            "no value": "a\n",
            "bad value": "a one\n",
            "bad timestamp": "a 1 2.5\n",
            "extra field": "a 1 2 3\n",
            "unterminated labels": 'a{b="c" 1\n',
            "bad escape": 'a{b="\\t"} 1\n',
            "unquoted label": "a{b=c} 1\n",
            "duplicate label": 'a{b="1",b="2"} 1\n',
            "duplicate series": 'a{b="1"} 1\na{b="1"} 2\n',
            "split group": "a 1\nb 1\na{x=\"y\"} 2\n",
            "type after sample": "a 1\n# TYPE a gauge\n",
            "two types": "# TYPE a gauge\n# TYPE a gauge\na 1\n",
            "unknown type": "# TYPE a thing\na 1\n",
            "two helps": "# HELP a x\n# HELP a y\na 1\n",
            "negative counter": "# TYPE a_total counter\na_total -1\n",
            "no blank before value": 'a{b="1"}1\n',
            "reserved label": 'a{__name__="x"} 1\n',
        }
        for what, text in bad.items():
            with self.subTest(what):
                with self.assertRaises(FormatError):
                    parse_metrics(text)


# --------------------------------------------------------------------------------------
# Against the real binaries.

class MetricsTest(ProxyTest):
    def setUp(self):
        super().setUp()
        self.echo = self.server(apps.EchoServer)
        self.start_public()
        self.priv = self.start_private()
        self.wait_online()

    # ---- helpers
    def get_metrics(self, token="default"):
        """(status, content type, body text) of GET /metrics."""
        if token == "default":
            token = self.token
        c = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=10 * SLOW)
        try:
            headers = {} if token is None else {"Authorization": "Bearer " + token}
            c.request("GET", "/metrics", headers=headers)
            r = c.getresponse()
            return r.status, r.getheader("Content-Type", ""), r.read().decode("utf-8")
        finally:
            c.close()

    def scrape(self):
        st, ctype, text = self.get_metrics()
        self.assertEqual(st, 200, "GET /metrics -> %s: %s" % (st, text[:300]))
        try:
            return parse_metrics(text)
        except FormatError as e:
            raise AssertionError("GET /metrics is not valid Prometheus text: %s\n---\n%s"
                                 % (e, text[:4000]))

    def value(self, families, name, **labels):
        fam = families.get(name)
        self.assertIsNotNone(fam, "GET /metrics has no %s" % name)
        return fam.value(**labels)

    def app_values(self, app):
        f = self.scrape()
        return {n: self.value(f, n, app=app) for n in APP_COUNTERS + APP_GAUGES}

    def wait_app_values(self, app, expected, what):
        """Bounded poll of /metrics until the app's series equal `expected` (a dict)."""
        seen = {}

        def ok():
            seen["v"] = self.app_values(app)
            return all(seen["v"].get(k) == v for k, v in expected.items())
        try:
            wait_until(ok, 20 * SLOW, what)
        except AssertionError as e:
            raise AssertionError("%s\nexpected %r\nlast seen %r" % (e, expected, seen.get("v")))
        return seen["v"]

    def proc_status(self, field):
        with open("/proc/%d/status" % self.public.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError("no %s in /proc/%d/status" % (field, self.public.pid))

    def proc_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.public.pid))

    # ---- tests
    def test_token_required(self):
        for token, what in ((None, "no token"), ("wrong-" + self.token, "a wrong token")):
            st, _, text = self.get_metrics(token)
            self.assertEqual(st, 401, "GET /metrics with %s -> %s" % (what, st))
            self.assertNotIn("nat_app_", text, "metrics leaked with %s" % what)
            self.assertNotIn("process_threads", text, "metrics leaked with %s" % what)

    def test_format_families_and_types(self):
        self.register("web", free_port(), self.echo.port)
        self.wait_online(apps=["web"])
        st, ctype, text = self.get_metrics()
        self.assertEqual(st, 200, text[:300])
        self.assertTrue(ctype.startswith("text/plain"), "Content-Type is %r" % ctype)
        f = self.scrape()
        for name in REQUIRED:
            self.assertIn(name, f, "GET /metrics has no %s" % name)
            self.assertTrue(f[name].help, "%s has no HELP line" % name)
            self.assertIsNotNone(f[name].type, "%s has no TYPE line" % name)
        for name in APP_COUNTERS + PRIVATE_COUNTERS:
            self.assertEqual(f[name].type, "counter", name)
        for name in APP_GAUGES + PRIVATE_GAUGES + PROCESS_GAUGES:
            self.assertEqual(f[name].type, "gauge", name)
        self.assertIn(f["process_uptime_seconds"].type, ("gauge", "counter"))
        for name in APP_COUNTERS + APP_GAUGES:
            self.assertEqual(self.value(f, name, app="web"), 0,
                             "%s{app=\"web\"} of a fresh app" % name)
            for _, labels, _ in f[name].samples:
                self.assertEqual(set(labels), {"app"}, "%s has labels %r" % (name, labels))
        self.assertEqual(self.value(f, "nat_private_online", private="home"), 1)
        self.assertIsNotNone(self.value(f, "nat_private_reconnects_total", private="home"))
        for name in PROCESS_GAUGES:
            v = self.value(f, name)
            self.assertIsNotNone(v, "%s has no sample without labels" % name)
            self.assertTrue(v >= 1 and v == int(v), "%s = %r" % (name, v))
        up1 = self.value(f, "process_uptime_seconds")
        self.assertIsNotNone(up1)
        self.assertGreaterEqual(up1, 0)
        up2 = self.value(self.scrape(), "process_uptime_seconds")
        self.assertGreaterEqual(up2, up1, "uptime went backwards")

    def test_counters_match_traffic(self):
        port = free_port()
        self.register("web", port, self.echo.port)
        self.wait_online(apps=["web"])
        base = self.wait_app_values("web", {n: 0 for n in APP_COUNTERS + APP_GAUGES},
                                    "a fresh app at zero")
        sizes = (1, 1000, 65536, 300001)
        for i, n in enumerate(sizes):
            data = harness.apps.pattern_bytes(n, i)
            with connect(port) as s:
                s.sendall(data)
                self.assertEqual(recv_exact(s, n), data, "echo of %d bytes" % n)
        total = sum(sizes)
        v = self.wait_app_values("web", {
            "nat_app_bytes_in_total": total,
            "nat_app_bytes_out_total": total,
            "nat_app_connections_total": len(sizes),
            "nat_app_connections_active": 0,
            "nat_app_connection_failures_total": 0,
        }, "the counters to match %d connections and %d bytes each way" % (len(sizes), total))
        self.assertEqual(base["nat_app_connections_total"], 0)
        # /list and /metrics tell the same story.
        app = self.find(self.list()["apps"], "web")
        self.assertEqual((app["bytes_in"], app["bytes_out"], app["total_connections"]),
                         (v["nat_app_bytes_in_total"], v["nat_app_bytes_out_total"],
                          v["nat_app_connections_total"]))

        # Connections held open count as active, then as total once more.
        held = []
        try:
            for i in range(3):
                s = connect(port)
                held.append(s)
                s.sendall(b"ping%d" % i)
                self.assertEqual(recv_exact(s, 5), b"ping%d" % i)
            self.wait_app_values("web", {"nat_app_connections_active": 3,
                                         "nat_app_connections_total": len(sizes) + 3},
                                 "three active connections")
        finally:
            for s in held:
                s.close()
        self.wait_app_values("web", {"nat_app_connections_active": 0,
                                     "nat_app_bytes_in_total": total + 15,
                                     "nat_app_bytes_out_total": total + 15},
                             "no active connection after closing them")

    def test_open_fds_follow_connections(self):
        port = free_port()
        self.register("web", port, self.echo.port)
        self.wait_online(apps=["web"])
        before = self.value(self.scrape(), "process_open_fds")
        n = 20
        held = []
        try:
            for i in range(n):
                s = connect(port)
                held.append(s)
                s.sendall(b"x")
                self.assertEqual(recv_exact(s, 1), b"x")
            self.wait_app_values("web", {"nat_app_connections_active": n}, "%d active" % n)
            during = self.value(self.scrape(), "process_open_fds")
            self.assertGreaterEqual(during - before, n,
                                    "process_open_fds went from %r to %r with %d more client "
                                    "connections" % (before, during, n))
            real = self.proc_fds()
            self.assertLessEqual(abs(during - real), 8,
                                 "process_open_fds says %r, /proc/PID/fd has %d" % (during, real))
        finally:
            for s in held:
                s.close()
        threads = self.value(self.scrape(), "process_threads")
        real = self.proc_status("Threads")
        self.assertTrue(threads >= 1, threads)
        self.assertLessEqual(abs(threads - real), max(4, real // 4),
                             "process_threads says %r, /proc/PID/status has %d" % (threads, real))

    def test_connection_failures(self):
        # A port that is bound but not listening: connecting to it is refused.
        hold = socket.socket()
        hold.bind(("127.0.0.1", 0))
        self.addCleanup(hold.close)
        dead_target = hold.getsockname()[1]
        port = free_port()
        self.register("dead", port, dead_target)
        self.wait_online(apps=["dead"])
        for _ in range(2):
            try:
                s = connect(port)
            except ConnectionRefusedError:
                self.fail("the public port of app dead refused the client")
            except ConnectionResetError:
                continue      # accepted, then reset before connect() returned: closed
            with s:
                self.assertTrue(harness.closed_by_peer(s, 10 * SLOW),
                                "a client of an app whose target refuses was not closed")
        self.wait_app_values("dead", {"nat_app_connection_failures_total": 2,
                                      "nat_app_connections_active": 0,
                                      "nat_app_bytes_out_total": 0},
                             "two connection failures")

    def test_private_online_and_reconnects(self):
        f = self.scrape()
        self.assertEqual(self.value(f, "nat_private_online", private="home"), 1)
        r0 = self.value(f, "nat_private_reconnects_total", private="home")
        self.assertIsNotNone(r0, "no nat_private_reconnects_total{private=\"home\"}")
        self.priv.stop()
        self.wait_offline()
        wait_until(lambda: self.value(self.scrape(), "nat_private_online", private="home") == 0,
                   20 * SLOW, "nat_private_online{private=\"home\"} 0 after the private stopped")
        self.priv = self.start_private()
        self.wait_online()
        f = self.scrape()
        self.assertEqual(self.value(f, "nat_private_online", private="home"), 1)
        self.assertEqual(self.value(f, "nat_private_reconnects_total", private="home"), r0 + 1,
                         "one reconnection of home")


if __name__ == "__main__":
    unittest.main(verbosity=2)
