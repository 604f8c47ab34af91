"""The state directory against a local attacker (docs/SECURITY.md, "State
directory"), with the real proxy_public running as root:

(a) a state directory made by `nobody` in a world-writable directory (the
    default ./proxy_state, and an explicit --state-dir), one writable by
    others, and a token planted by `nobody` in a directory of ours: refused at
    start with a message saying what and why; the planted token is never read
    (its atime stays 0) and nothing in the directory, nor the file that
    planted temporary-name links point at, is changed;
(b) symbolic links planted for apps.json, token, tls.key and tls.crt: refused,
    the outside files unchanged, the links left alone;
(c) the normal case: a fresh directory is created 0700 with files 0600, it
    works end to end and again after a restart, no temporary file is left, and
    a directory restored with loose modes (0755, files 0644) is tightened.

Needs root (files are handed to nobody with chown), as in the CI."""
import os
import secrets
import subprocess

import harness
from harness import ProxyTest, SLOW, free_port
from helpers import apps

NOBODY = 65534
STATE_FILES = ("token", "apps.json", "tls.key", "tls.crt")


def write(path, data, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data.encode() if isinstance(data, str) else data)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def snapshot(d):
    """Everything about a directory's entries that an attack could change:
    type and mode, owner, link target or contents, mtime."""
    out = {".": (os.lstat(d).st_mode, os.lstat(d).st_uid)}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        st = os.lstat(p)
        if os.path.islink(p):
            body = os.readlink(p)
        elif os.path.isdir(p):
            body = None
        else:
            body = read(p)
        out[name] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, body)
    return out


def chown_tree(d, uid):
    os.chown(d, uid, uid)
    for name in os.listdir(d):
        os.chown(os.path.join(d, name), uid, uid, follow_symlinks=False)


class StateDirTest(ProxyTest):
    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest("needs root (chown to nobody), as in the CI")
        # The harness's temp dir is 0700 root; the "world-writable" scenes are
        # made inside it.

    # ---- helpers
    def run_public(self, args, cwd=None, expect_refusal=True):
        """Run proxy_public to completion (it must stop on its own when it
        refuses the state directory); returns (exit code, output). A binary
        that adopts the directory instead keeps running and fails the test."""
        argv = [self.bin("proxy_public"), str(free_port()), str(free_port()),
                "--bind", "127.0.0.1"] + list(args) + harness.EXTRA_ARGS
        env = dict(os.environ, **harness.SAN_ENV)
        env.pop("NAT_TOKEN", None)
        log_path = self._log_path("public-refused")
        try:
            p = subprocess.run(argv, cwd=cwd or harness.REPO, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=15 * SLOW, env=env)
        except subprocess.TimeoutExpired as e:
            out = ((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", "replace")
            with open(log_path, "w") as f:
                f.write("# %s\n# still running after %ds, killed\n%s" % (argv, 15 * SLOW, out))
            self.fail("proxy_public %s did not refuse the state directory: still running after "
                      "%ds; output:\n%s" % (" ".join(args), 15 * SLOW, out))
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        with open(log_path, "w") as f:
            f.write("# %s\n# exit %d\n%s" % (argv, p.returncode, out))
        for pat in harness.SANITIZER_PATTERNS:
            self.assertNotIn(pat, out, "sanitizer report:\n" + out)
        if expect_refusal:
            self.assertNotEqual(p.returncode, 0, "refused, but exit code 0:\n" + out)
            self.assertNotIn("ev=ready", out, "it got ready:\n" + out)
        return p.returncode, out

    def plant_temp_links(self, d, target, count=300):
        """Links at the temporary names today's state.c would use
        (".NAME.tmp.PID") for the next `count` pids, pointing at target."""
        try:
            with open("/proc/sys/kernel/ns_last_pid") as f:
                last = int(f.read())
        except OSError:
            return
        for pid in range(last + 1, last + 1 + count):
            for name in STATE_FILES:
                os.symlink(target, os.path.join(d, ".%s.tmp.%d" % (name, pid)))

    # ---- (a) a directory someone else made or can write
    def test_a_foreign_state_dir_in_world_writable_dir(self):
        shared = os.path.join(self.tmp, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o1777)          # like /tmp
        victim = os.path.join(self.tmp, "victim")
        write(victim, "root's file outside the state directory\n", 0o644)
        victim_before = snapshot(self.tmp)["victim"]
        planted = "planted-by-nobody-" + secrets.token_hex(8)
        sd = os.path.join(shared, "proxy_state")
        os.mkdir(sd, 0o700)
        write(os.path.join(sd, "token"), planted + "\n")
        self.plant_temp_links(sd, victim)
        chown_tree(sd, NOBODY)
        before = snapshot(sd)
        tok = os.path.join(sd, "token")

        # The default ./proxy_state of a server started in that directory,
        # then the same directory given with --state-dir.
        for args, cwd, shown in (([], shared, "proxy_state"), (["--state-dir", sd], None, sd)):
            os.utime(tok, ns=(0, os.lstat(tok).st_mtime_ns))
            rc, out = self.run_public(args, cwd=cwd)
            self.assertIn("state directory %s is owned by uid %d, not by you (uid 0): "
                          "refusing it" % (shown, NOBODY), out)
            self.assertIn("--state-dir", out, "the message does not say how to fix it:\n" + out)
            self.assertNotIn(planted, out, "the planted token was used:\n" + out)
            self.assertEqual(os.stat(tok).st_atime_ns, 0, "the planted token was read")
            self.assertEqual(snapshot(sd), before, "the planted directory was changed")
            self.assertEqual(snapshot(self.tmp)["victim"], victim_before,
                             "the file behind a planted temporary-name link was written")

    def test_a_state_dir_writable_by_others(self):
        sd = os.path.join(self.tmp, "state")
        os.mkdir(sd)
        write(os.path.join(sd, "token"), "planted-" + secrets.token_hex(8))
        for mode in (0o777, 0o770, 0o1733):
            os.chmod(sd, mode)
            before = snapshot(sd)
            rc, out = self.run_public(["--state-dir", sd])
            self.assertRegex(out, r"state directory %s is writable by (group|others|group and "
                                  r"others) \(mode %04o\): refusing it" % (sd, mode))
            self.assertIn("chmod 700", out)
            self.assertEqual(snapshot(sd), before, "mode %o: directory changed" % mode)

    def test_a_token_planted_by_nobody(self):
        sd = os.path.join(self.tmp, "state")
        os.mkdir(sd, 0o700)
        planted = "planted-by-nobody-" + secrets.token_hex(8)
        tok = os.path.join(sd, "token")
        write(tok, planted)
        os.chown(tok, NOBODY, NOBODY)
        os.utime(tok, ns=(0, os.lstat(tok).st_mtime_ns))
        rc, out = self.run_public(["--state-dir", sd])
        self.assertIn("%s/token is owned by uid %d, not by you (uid 0): refusing it" % (sd, NOBODY),
                      out)
        self.assertNotIn(planted, out)
        self.assertEqual(os.stat(tok).st_atime_ns, 0, "the planted token was read")
        self.assertEqual(os.listdir(sd), ["token"], "files were made next to the planted token")

    # ---- (b) planted symbolic links
    def test_b_symlinked_state_files(self):
        outside_json = ('{"version": 1, "privates": ["home"], "apps": [{"name": "planted", '
                        '"public_port": %d, "target_host": "127.0.0.1", "target_port": 22, '
                        '"private": "home"}]}\n' % free_port())
        contents = {"apps.json": outside_json, "token": "outside-token-" + secrets.token_hex(8),
                    "tls.key": "outside key\n", "tls.crt": "outside certificate\n"}
        for name in ("apps.json", "token", "tls.key", "tls.crt"):
            base = os.path.join(self.tmp, name + "-case")
            os.mkdir(base)
            sd = os.path.join(base, "state")
            os.mkdir(sd, 0o700)
            outside = os.path.join(base, "outside-" + name)
            write(outside, contents[name], 0o600)
            os.symlink(outside, os.path.join(sd, name))
            outside_before = snapshot(base)["outside-" + name]
            before = snapshot(sd)
            # token: let it be read from the state directory (no --token).
            args = ["--state-dir", sd] + ([] if name == "token" else ["--token", self.token])
            rc, out = self.run_public(args)
            self.assertIn("%s/%s is a symbolic link: refusing it" % (sd, name), out)
            self.assertIn("remove the link", out)
            self.assertNotIn(contents["token"], out)
            self.assertEqual(snapshot(base)["outside-" + name], outside_before,
                             "%s: the file outside the state directory changed" % name)
            self.assertTrue(os.path.islink(os.path.join(sd, name)), "%s: link replaced" % name)
            after = snapshot(sd)
            if name == "apps.json":
                # The TLS pair is made before apps.json is read.
                after.pop("tls.key", None)
                after.pop("tls.crt", None)
            self.assertEqual(after, before, "%s: state directory changed" % name)

    # ---- (c) the normal case
    def test_c_fresh_state_dir_and_restart(self):
        echo = self.server(apps.EchoServer)
        sd = os.path.join(self.tmp, "fresh", "state")
        os.mkdir(os.path.dirname(sd), 0o755)
        old_umask = os.umask(0o022)
        self.addCleanup(os.umask, old_umask)

        def start():
            self.tunnel_port = getattr(self, "tunnel_port", None) or free_port()
            self.web_port = getattr(self, "web_port", None) or free_port()
            argv = [self.bin("proxy_public"), str(self.tunnel_port), str(self.web_port),
                    "--bind", "127.0.0.1", "--state-dir", sd, "--log-level", "debug"]
            p = self.spawn("public", argv + harness.EXTRA_ARGS, {"NAT_TOKEN": None})
            self.public = p
            p.wait_log(r"ev=ready", 20 * SLOW)
            self.token = read(os.path.join(sd, "token")).decode().strip()
            self.wait_api_up(p)
            return p

        def check_modes(what):
            st = os.lstat(sd)
            self.assertEqual((st.st_mode & 0o7777, st.st_uid), (0o700, 0),
                             "%s: state directory mode %o uid %d"
                             % (what, st.st_mode & 0o7777, st.st_uid))
            names = sorted(os.listdir(sd))
            self.assertEqual(names, sorted(STATE_FILES), "%s: entries %s (temporary left?)"
                             % (what, names))
            for name in names:
                st = os.lstat(os.path.join(sd, name))
                self.assertEqual((oct(st.st_mode), st.st_uid), (oct(0o100600), 0),
                                 "%s: %s" % (what, name))

        pub = start()
        self.assertIn("Generated a new token", pub.output())
        fp = pub.wait_log(r"ev=ready.*fingerprint=([0-9A-F:]{95}|none)", 5 * SLOW).group(1)
        app_port = free_port()
        self.start_private(register=["echo:%d:127.0.0.1:%d" % (app_port, echo.port)])
        self.wait_online(apps=["echo"])
        self.echo_roundtrip(app_port)
        harness.wait_until(lambda: os.path.exists(os.path.join(sd, "apps.json")), 10 * SLOW,
                           "apps.json saved")
        check_modes("first start")
        token = self.token

        # Restart: same token, same certificate, the app comes back.
        self.assertEqual(pub.stop(), 0)
        pub = start()
        self.assertEqual(self.token, token)
        self.assertIn("Using the token", pub.output())
        self.assertNotIn(token, pub.output(), "the token is printed again at a restart")
        self.assertEqual(pub.wait_log(r"ev=ready.*fingerprint=([0-9A-F:]{95}|none)",
                                      5 * SLOW).group(1), fp)
        self.wait_online(apps=["echo"])
        self.echo_roundtrip(app_port)
        check_modes("restart")

        # Restored from a backup with loose modes: ours, so tightened, not refused.
        self.assertEqual(pub.stop(), 0)
        os.chmod(sd, 0o755)
        for name in STATE_FILES:
            os.chmod(os.path.join(sd, name), 0o644)
        pub = start()
        self.assertEqual(self.token, token)
        self.wait_online(apps=["echo"])
        check_modes("loose modes tightened")


if __name__ == "__main__":
    harness.main()
