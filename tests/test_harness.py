"""Checks of the harness itself: the checks every test relies on do fail."""
import harness
from harness import ProxyTest

SH = "/bin/sh"


class HarnessSelfTest(ProxyTest):
    needs_binaries = False

    def cleanup_problems(self):
        try:
            self._cleanup()
        except AssertionError as e:
            return str(e)
        finally:
            self.procs = []  # stopped and checked here, not again at teardown
        return ""

    def test_sanitizer_report_fails_the_test(self):
        for pat in harness.SANITIZER_PATTERNS:
            p = self.spawn("fake", [SH, "-c", 'echo "==1==%s: boom" >&2; exec sleep 60' % pat])
            p.wait_log("(?m)^==1==", 10)
        self.assertIn("sanitizer report", self.cleanup_problems())

    def test_exit_code_after_sigterm_is_checked(self):
        p = self.spawn("fake", [SH, "-c", 'trap "exit 3" TERM; echo up; while :; do sleep 0.1; done'])
        p.wait_log("(?m)^up$", 10)
        problems = self.cleanup_problems()
        self.assertIn("exited with 3 after SIGTERM", problems)

    def test_process_ignoring_sigterm_is_killed_and_reported(self):
        p = self.spawn("fake", [SH, "-c", 'trap "" TERM; echo up; while :; do sleep 0.1; done'])
        p.wait_log("(?m)^up$", 10)
        p.stop(timeout=1)
        self.assertFalse(p.alive())
        self.assertEqual(p.returncode, "hung after SIGTERM")
        self.assertIn("hung after SIGTERM", self.cleanup_problems())

    def test_clean_exit_passes(self):
        p = self.spawn("fake", [SH, "-c", 'trap "exit 0" TERM; echo up; while :; do sleep 0.1; done'])
        p.wait_log("(?m)^up$", 10)
        self.assertEqual(self.cleanup_problems(), "")

    def test_bounded_waits_fail(self):
        with self.assertRaises(AssertionError):
            harness.wait_until(lambda: False, 0.3, "nothing")
        p = self.spawn("fake", [SH, "-c", "exec sleep 60"])
        p.expect_exit = None
        with self.assertRaises(AssertionError):
            p.wait_log("never printed", 0.3)

    def test_frame_layout(self):
        f = harness.frame({"op": 4})
        self.assertEqual(f[:4], len(b'{"op": 4}').to_bytes(4, "big"))
        self.assertEqual(f[4:], b'{"op": 4}')


if __name__ == "__main__":
    harness.main()
