"""The Debian packages, the systemd units and the man pages.

- test_man_pages_cover_help: every option --help lists is in the man page
  (no root needed).
- test_package (root, with dpkg-buildpackage and debhelper): builds the .debs
  from a copy of the tree, runs lintian (no error or warning), checks their
  files, modes and dependencies (runtime libraries only), extracts them into a
  folder, verifies the units with systemd-analyze (verify, and the security
  score the docs state), and starts both binaries from their units' ExecStart
  lines with the packaged example configs (only the ports, host and token
  adjusted, and the state under the test's folder): the public comes up,
  the private connects and an app answers through the tunnel.

Installing the packages into a fresh minimal Debian 12 (debootstrap) with the
service users is tests/minimal_debian.sh, part of `make soak` (minutes)."""
import glob
import os
import re
import shlex
import shutil
import subprocess
import unittest

import harness
from harness import ProxyTest, SLOW, free_port
from helpers import apps

REPO = harness.REPO
UNITS = ["proxy_public.service", "proxy_private.service", "proxy_private@.service"]
# The exposure level systemd-analyze security gives the units, as
# docs/OPERATIONS.md states it (lower is better; "OK" is below 2.0+).
MAX_EXPOSURE = {"proxy_public.service": 1.5, "proxy_private.service": 1.4,
                "proxy_private@home.service": 1.4}


def run(argv, cwd=None, timeout=600, env=None):
    p = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=timeout, env=env,
                       stdin=subprocess.DEVNULL)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


class ManPageTest(ProxyTest):
    needs_binaries = True

    def test_man_pages_cover_help(self):
        for prog in ("proxy_public", "proxy_private"):
            rc, help_text = run([self.bin(prog), "--help"], timeout=20 * SLOW)
            self.assertEqual(rc, 0, help_text)
            opts = sorted(set(re.findall(r"(?m)^\s+(--[a-z][a-z0-9-]*)", help_text)))
            self.assertGreater(len(opts), 8, help_text)
            with open(os.path.join(REPO, "man", prog + ".1")) as f:
                page = f.read()
            # roff writes a dash of an option as \-.
            text = page.replace("\\-", "-")
            for o in opts:
                self.assertRegex(text, r"(?m)^\.(B|BI|BR)\s+%s\b" % re.escape(o),
                                 "%s(1) has no entry for %s (listed by --help)" % (prog, o))
            for section in ("SYNOPSIS", "OPTIONS", "CONFIGURATION FILE", "SIGNALS",
                            "EXIT STATUS", "FILES", "ENVIRONMENT"):
                self.assertIn(".SH %s" % section, page, "%s(1) lacks %s" % (prog, section))
            if shutil.which("man"):
                rc, out = run(["man", "--warnings", "-l", "-E", "UTF-8", "-P", "cat",
                               os.path.join(REPO, "man", prog + ".1")],
                              env=dict(os.environ, MANWIDTH="80"))
                self.assertEqual(rc, 0, out)
                self.assertNotRegex(out, r"(?m)^(troff|groff|man):.*warning", out)


@unittest.skipUnless(os.geteuid() == 0, "builds packages as root, as CI does")
@unittest.skipUnless(harness.MODE == "release", "the packages are release builds")
class PackageTest(ProxyTest):
    def setUp(self):
        super().setUp()
        for tool in ("dpkg-buildpackage", "dh", "lintian", "systemd-analyze"):
            if not shutil.which(tool):
                self.fail("%s is missing: sh tools/deps.sh test installs it" % tool)

    def build(self):
        src = os.path.join(self.tmp, "src", "proxy-tunnel")
        os.makedirs(src)
        rc, files = (run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO)
                     if shutil.which("git") else (1, ""))
        if rc != 0:
            # No git (a tree from a tarball): everything but what builds make.
            skip = {".git", "build", "node_modules", "proxy_public", "proxy_private"}
            found = []
            for d, dirs, names in os.walk(REPO):
                rel = os.path.relpath(d, REPO)
                dirs[:] = [x for x in dirs if x not in skip and
                           os.path.join(rel, x) != os.path.join("tests", "out")]
                found += [os.path.normpath(os.path.join(rel, n)) for n in names
                          if rel != "." or n not in skip]
            files = "\n".join(found)
        for f in files.splitlines():
            if f.startswith("tests/out/") or not os.path.isfile(os.path.join(REPO, f)):
                continue
            os.makedirs(os.path.join(src, os.path.dirname(f)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, f), os.path.join(src, f))
        env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck")  # unit tests run in make test
        rc, out = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env)
        with open(os.path.join(self.out_dir, "dpkg-buildpackage.log"), "w") as f:
            f.write(out)
        self.assertEqual(rc, 0, out[-3000:])
        debs = {os.path.basename(p).split("_")[0]: p
                for p in glob.glob(os.path.join(self.tmp, "src", "*.deb"))}
        for name in ("proxy-public", "proxy-private"):
            self.assertIn(name, debs, "no %s .deb: %s" % (name, sorted(debs)))
        return debs, glob.glob(os.path.join(self.tmp, "src", "*.changes"))[0]

    def check_deb(self, deb, want):
        rc, info = run(["dpkg-deb", "-f", deb, "Depends"])
        self.assertEqual(rc, 0, info)
        deps = [d.strip().split(" ")[0] for d in info.strip().split(",")]
        for d in deps:
            self.assertRegex(d, r"^(lib[a-z0-9.+-]+|passwd)$",
                             "%s depends on %s, not a runtime library" % (deb, d))
        rc, listing = run(["dpkg-deb", "-c", deb])
        self.assertEqual(rc, 0, listing)
        modes = {}
        for line in listing.splitlines():
            parts = line.split()
            modes[parts[5].lstrip(".")] = (parts[0], parts[1])
        for path, mode in want.items():
            self.assertIn(path, modes, "%s lacks %s:\n%s" % (deb, path, listing))
            self.assertEqual(modes[path], (mode, "root/root"), "%s: %s" % (deb, path))
        rc, conffiles = run(["sh", "-c", "dpkg-deb --ctrl-tarfile %s | tar -xOf - ./conffiles"
                             % shlex.quote(deb)])
        return conffiles

    def test_package(self):
        debs, changes = self.build()
        rc, out = run(["lintian", "--allow-root", changes])
        with open(os.path.join(self.out_dir, "lintian.log"), "w") as f:
            f.write(out)
        self.assertNotRegex(out, r"(?m)^[EW]: ", "lintian errors or warnings:\n" + out)
        cf = self.check_deb(debs["proxy-public"], {
            "/usr/bin/proxy_public": "-rwxr-xr-x",
            "/usr/share/man/man1/proxy_public.1.gz": "-rw-r--r--",
            "/lib/systemd/system/proxy_public.service": "-rw-r--r--",
            "/etc/proxy_public.conf": "-rw-r--r--"})
        self.assertIn("/etc/proxy_public.conf", cf)
        cf = self.check_deb(debs["proxy-private"], {
            "/usr/bin/proxy_private": "-rwxr-xr-x",
            "/usr/share/man/man1/proxy_private.1.gz": "-rw-r--r--",
            "/lib/systemd/system/proxy_private.service": "-rw-r--r--",
            "/lib/systemd/system/proxy_private@.service": "-rw-r--r--",
            "/etc/proxy_private.conf": "-rw-r--r--"})
        self.assertIn("/etc/proxy_private.conf", cf)

        root = os.path.join(self.tmp, "root")
        for deb in (debs["proxy-public"], debs["proxy-private"]):
            rc, out = run(["dpkg-deb", "-x", deb, root])
            self.assertEqual(rc, 0, out)
        self.verify_units(root)
        self.start_from_units(root)

    def verify_units(self, root):
        unitdir = os.path.join(self.tmp, "units")
        os.makedirs(unitdir)
        for u in UNITS:
            with open(os.path.join(root, "lib/systemd/system", u)) as f:
                text = f.read()
            # The binaries where they were extracted (verify checks they exist).
            text = text.replace("/usr/bin/", os.path.join(root, "usr/bin") + "/")
            with open(os.path.join(unitdir, u), "w") as f:
                f.write(text)
        os.symlink("proxy_private@.service", os.path.join(unitdir, "proxy_private@home.service"))
        names = ["proxy_public.service", "proxy_private.service", "proxy_private@home.service"]
        rc, out = run(["systemd-analyze", "verify", "--man=no"] + names, cwd=unitdir)
        self.assertEqual((rc, out.strip()), (0, ""), "systemd-analyze verify:\n" + out)
        for u in names:
            rc, out = run(["systemd-analyze", "security", "--offline=true", "./" + u],
                          cwd=unitdir)
            m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
            self.assertTrue(m, out)
            self.assertLessEqual(float(m.group(1)), MAX_EXPOSURE[u],
                                 "%s exposure %s, docs say %s:\n%s"
                                 % (u, m.group(1), MAX_EXPOSURE[u], out))
            for setting in ("ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes",
                            "PrivateTmp=yes", "Restart=on-failure", "StateDirectory=",
                            "LimitNOFILE=", "TasksMax=", "User=", "CapabilityBoundingSet=",
                            "Type=notify", "ExecReload="):
                with open(os.path.join(unitdir, u)) as f:
                    self.assertIn(setting, f.read(), u)

    def exec_start(self, root, unit):
        with open(os.path.join(root, "lib/systemd/system", unit)) as f:
            m = re.search(r"(?m)^ExecStart=(.*)$", f.read())
        argv = shlex.split(m.group(1))
        # Into the extracted folder: the binary and the config it names.
        argv[0] = os.path.join(root, argv[0].lstrip("/"))
        i = argv.index("--config")
        argv[i + 1] = os.path.join(root, argv[i + 1].lstrip("/"))
        return argv

    def edit(self, path, changes):
        with open(path) as f:
            text = f.read()
        for key, value in changes.items():
            text, n = re.subn(r"(?m)^#?%s = .*$" % re.escape(key), "%s = %s" % (key, value),
                              text, count=1)
            self.assertEqual(n, 1, "the example config has no line for %s" % key)
        with open(path, "w") as f:
            f.write(text)

    def start_from_units(self, root):
        echo = self.server(apps.EchoServer)
        self.tunnel_port, self.web_port, app = free_port(), free_port(), free_port()
        pub_conf = os.path.join(root, "etc/proxy_public.conf")
        priv_conf = os.path.join(root, "etc/proxy_private.conf")
        self.edit(pub_conf, {"tunnel-port": self.tunnel_port, "web-port": self.web_port,
                             "bind": "127.0.0.1"})
        state = os.path.join(self.tmp, "var-lib-proxy_public")
        os.mkdir(state, 0o700)
        pub = self.spawn("public", self.exec_start(root, "proxy_public.service") +
                         harness.EXTRA_ARGS,
                         {"STATE_DIRECTORY": state, "NAT_TOKEN": None})
        self.public = pub
        pub.wait_log(r"ev=ready .*tunnel_port=%d .*state_dir=%s" % (self.tunnel_port, state),
                     20 * SLOW)
        self.assertIn("Generated a new token", pub.output())
        with open(os.path.join(state, "token")) as f:
            self.token = f.read().strip()
        self.wait_api_up(pub)
        token_file = os.path.join(root, "etc/proxy_private.token")
        with open(token_file, "w") as f:
            f.write(self.token + "\n")
        os.chmod(token_file, 0o600)
        pstate = os.path.join(self.tmp, "var-lib-proxy_private")
        os.mkdir(pstate, 0o700)
        self.edit(priv_conf, {"host": "127.0.0.1", "tunnel-port": self.tunnel_port,
                              "token-file": token_file, "name": "home",
                              "register": "ssh:%d:127.0.0.1:%d" % (app, echo.port)})
        argv = self.exec_start(root, "proxy_private.service") + harness.EXTRA_ARGS
        priv = self.spawn("private-home", argv, {"STATE_DIRECTORY": pstate, "NAT_TOKEN": None})
        self.wait_online(apps=["ssh"])
        self.echo_roundtrip(app)
        self.assertTrue(os.path.exists(os.path.join(pstate, "known_hosts")) or not harness.TLS,
                        "known_hosts not in $STATE_DIRECTORY")
        self.assertTrue(priv.alive())


if __name__ == "__main__":
    harness.main()
