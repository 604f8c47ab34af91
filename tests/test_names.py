"""Two private proxies with the same name: the newer tunnel replaces the older
one, which is told why (ERROR "replaced") and backs off for the longest delay
instead of both taking turns forever."""
import re
import time

import harness
from harness import ProxyTest, SLOW


class NameClashTest(ProxyTest):
    def test_same_name_does_not_flap(self):
        self.start_public()
        first = self.start_private(name="home")
        self.wait_online()
        second = self.start_private(name="home")
        second.name = "private-home-2"
        m = first.wait_log(r"lvl=error ev=replaced name=home.*--name", 15 * SLOW)
        self.assertTrue(m)
        # Watch for a while: the first one waits ~30 s before trying again, so
        # the public sees at most a couple of replacements, not dozens.
        time.sleep(8)
        n = len(re.findall(r"ev=tunnel_replaced", self.public.output()))
        self.assertLessEqual(n, 2, "tunnel replaced %d times in 8 s: the two proxies flap" % n)
        self.wait_online()


if __name__ == "__main__":
    harness.main()
