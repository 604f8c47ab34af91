"""Command line: --help, --version, bad arguments."""
import subprocess

import harness
from harness import ProxyTest


class CliTest(ProxyTest):
    def run_bin(self, name, args):
        p = subprocess.run([self.bin(name)] + args, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=20 * harness.SLOW,
                           env=dict(harness.os.environ, **harness.SAN_ENV))
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        with open(self._log_path(name + "-cli"), "w") as f:
            f.write("# %s %s\n# exit %d\n%s" % (name, " ".join(args), p.returncode, out))
        for pat in harness.SANITIZER_PATTERNS:
            self.assertNotIn(pat, out, "%s %s: sanitizer report:\n%s" % (name, args, out))
        return p.returncode, out

    def test_help(self):
        for name in ("proxy_public", "proxy_private"):
            rc, out = self.run_bin(name, ["--help"])
            self.assertEqual(rc, 0, "%s --help exit code; output:\n%s" % (name, out))
            self.assertIn("usage", out.lower(), "%s --help prints no usage:\n%s" % (name, out))
            self.assertIn("--token", out, "%s --help does not list --token" % name)

    def test_version(self):
        version = harness.read_version()
        for name in ("proxy_public", "proxy_private"):
            rc, out = self.run_bin(name, ["--version"])
            self.assertEqual(rc, 0, "%s --version exit code; output:\n%s" % (name, out))
            self.assertTrue(out.strip(), "%s --version printed nothing" % name)
            if version:
                self.assertIn(version, out, "%s --version does not say %s" % (name, version))

    def test_unknown_option(self):
        cases = [("proxy_public", ["6300", "6301", "--no-such-flag"], "--no-such-flag"),
                 ("proxy_private", ["127.0.0.1", "6300", "--no-such-flag"], "--no-such-flag")]
        for name, args, bad in cases:
            rc, out = self.run_bin(name, args)
            self.assertNotEqual(rc, 0, "%s %s exited 0" % (name, args))
            self.assertIn(bad, out, "%s does not name the bad argument %r:\n%s"
                          % (name, bad, out))

    def test_bad_values(self):
        cases = [
            ("proxy_public", ["notaport", "6301"], "notaport"),
            ("proxy_public", ["6300", "70000"], "70000"),
            ("proxy_public", ["6300", "6301", "--log-level", "loud"], "loud"),
            ("proxy_private", ["127.0.0.1", "65536"], "65536"),
            ("proxy_private", ["127.0.0.1", "6300", "--register", "bogus"], "bogus"),
            ("proxy_private", ["127.0.0.1", "6300", "--register", "a:99999:h:80"], "99999"),
        ]
        for name, args, bad in cases:
            rc, out = self.run_bin(name, args)
            self.assertNotEqual(rc, 0, "%s %s exited 0" % (name, args))
            self.assertTrue(bad in out, "%s %s: message does not name the bad value %r:\n%s"
                            % (name, args, bad, out))

    def test_missing_arguments(self):
        for name in ("proxy_public", "proxy_private"):
            rc, out = self.run_bin(name, [])
            self.assertNotEqual(rc, 0, "%s without arguments exited 0" % name)
            self.assertTrue(out.strip(), "%s without arguments printed nothing" % name)


if __name__ == "__main__":
    harness.main()
