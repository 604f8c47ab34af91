"""The scripts a newcomer runs name what they use: every program that the shell
scripts (tools/, tests/, fuzz/, bench/) and the Python tests call comes
either from a package that every Debian 12 has (Essential, or priority
required: what `debootstrap --variant=minbase` installs) or from a package
that tools/deps.sh checks and installs for that script (its set: "demo" for
tools/demo.sh, "soak" for tests/soak.sh and tests/minimal_debian.sh, "test"
for everything else).

How: the command words of each script are found by a simple reading of the
shell (first word of each simple command, after assignments and keywords)
and of the Python tests (the first element of argv lists handed to
subprocess or spawn); each one that is a program on this machine is mapped
to its package with dpkg -S. The real check on a minimal Debian 12 is
tests/minimal_debian.sh (make soak)."""
import glob
import os
import re
import shutil
import subprocess
import unittest

import harness

REPO = harness.REPO

SHELL_WORDS = set("""
if then else elif fi for while until do done case esac in function return exit local
export set shift trap wait cd echo printf read test [ ] [[ ]] eval exec command kill true
false break continue unset umask ulimit getopts alias type hash times : . source pwd let
declare readonly { } ! time
""".split())


def deps_sets():
    """The package sets of tools/deps.sh: {"build": {...}, "demo": ..., "test": ...}."""
    with open(os.path.join(REPO, "tools", "deps.sh")) as f:
        text = f.read()
    raw = {}
    for m in re.finditer(r'(?ms)^([A-Z]+)="([^"]*)"', text):
        raw[m.group(1)] = m.group(2)

    def expand(v):
        return re.sub(r"\$([A-Z]+)", lambda m: expand(raw.get(m.group(1), "")), v)
    sets = {}
    for m in re.finditer(r"(?m)^([a-z]+)\) WANT=\$([A-Z]+) ;;", text):
        sets[m.group(1)] = set(expand("$" + m.group(2)).split())
    return sets


def shell_commands(path):
    """(line number, word) for the first word of each simple command."""
    out = []
    heredoc = None
    with open(path) as f:
        lines = f.read().splitlines()
    for no, line in enumerate(lines, 1):
        if heredoc:
            if line.strip() == heredoc:
                heredoc = None
            continue
        m = re.search(r"<<-?\s*'?\"?([A-Za-z_]+)'?\"?", line)
        if m:
            heredoc = m.group(1)
            line = line[:m.start()]
        raw = re.sub(r"(^|\s)#.*$", "", line)
        # Comments, quoted strings (their insides are not commands).
        line = re.sub(r"(^|\s)#.*$", "", line)
        line = re.sub(r"'[^']*'", "''", line)
        line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
        for m in re.finditer(r"(?<![\w./-])(/usr/bin/[a-z][a-z0-9_.+-]*)", raw):
            out.append((no, m.group(1)))
        for seg in re.split(r"\$\(|`|;;|[;&|()]|\bthen\b|\bdo\b|\belse\b", line):
            words = seg.split()
            while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or
                             words[0] in SHELL_WORDS):
                if words[0] in ("command", "exec", "time") and len(words) > 1 and \
                        words[1].startswith("-"):
                    words = []
                    break
                words = words[1:]
            if not words:
                continue
            w = words[0]
            if re.match(r"^[a-z][a-z0-9_.+-]*$", w) or w.startswith("/usr/") or \
                    w.startswith("/bin/") or w.startswith("/sbin/"):
                out.append((no, w))
    return out


def python_commands(path):
    with open(path) as f:
        text = f.read()
    found = []
    for m in re.finditer(r'(?:subprocess\.\w+|Popen|run|check_output|spawn\([^,\[]+,)\s*\(?\s*'
                         r'\[\s*"([a-z][a-z0-9_.+-]*|/usr/bin/[a-z0-9_.+-]+)"', text):
        found.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return found


_pkg_cache = {}


def with_dependencies(pkgs, depth=2):
    """pkgs and what they pull in (Depends, depth levels): python3 brings
    python3-minimal, which owns /usr/bin/python3."""
    out = set(pkgs)
    frontier = set(pkgs)
    for _ in range(depth):
        new = set()
        for p in frontier:
            q = subprocess.run(["dpkg-query", "-W", "-f", "${Depends}, ${Pre-Depends}", p],
                               capture_output=True, text=True)
            for alt in q.stdout.split(","):
                name = alt.split("|")[0].strip().split(" ")[0].split(":")[0]
                if name and name not in out:
                    new.add(name)
        out |= new
        frontier = new
    return out


def package_of(cmd):
    """(package, essential_or_required) for a program, or None when not one."""
    if cmd in _pkg_cache:
        return _pkg_cache[cmd]
    path = cmd if cmd.startswith("/") else None
    # The Debian program first (a PATH may hold others, e.g. a pyenv python3).
    for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if path is None and os.access(os.path.join(d, cmd), os.X_OK):
            path = os.path.join(d, cmd)
    path = path or shutil.which(cmd)
    result = None
    if path:
        cands = {path, os.path.realpath(path)}
        for c in list(cands):
            for a, b in (("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")):
                if c.startswith(a):
                    cands.add(b + c[len(a):])
                elif c.startswith(b):
                    cands.add(a + c[len(b):])
        for c in sorted(cands):
            p = subprocess.run(["dpkg", "-S", c], capture_output=True, text=True)
            if p.returncode == 0:
                pkg = p.stdout.split(":")[0].split(",")[0].strip()
                q = subprocess.run(["dpkg-query", "-W", "-f", "${Essential} ${Priority}", pkg],
                                   capture_output=True, text=True)
                base = q.stdout.split()
                result = (pkg, bool(base) and (base[0] == "yes" or "required" in base))
                break
        if result is None:
            result = ("(not from a package: %s)" % path, False)
    _pkg_cache[cmd] = result
    return result


@unittest.skipUnless(shutil.which("dpkg"), "needs dpkg to map programs to packages")
@unittest.skipUnless(harness.MODE == "release", "about the scripts, not a build: once is enough")
class ScriptDepsTest(unittest.TestCase):
    def scripts(self):
        sh = sorted(set(glob.glob(os.path.join(REPO, "tools", "*.sh")) +
                        glob.glob(os.path.join(REPO, "tests", "*.sh")) +
                        glob.glob(os.path.join(REPO, "tests", "*", "*.sh")) +
                        glob.glob(os.path.join(REPO, "fuzz", "*.sh")) +
                        glob.glob(os.path.join(REPO, "bench", "*.sh")) +
                        [os.path.join(REPO, ".ci", "run")]))
        py = sorted(glob.glob(os.path.join(REPO, "tests", "*.py")) +
                    glob.glob(os.path.join(REPO, "tests", "*", "*.py")) +
                    glob.glob(os.path.join(REPO, "bench", "*.py")))
        return sh, py

    def test_every_program_is_named_in_deps(self):
        sets = deps_sets()
        self.assertIn("demo", sets, "tools/deps.sh has no demo set")
        self.assertIn("test", sets)
        sets = {k: with_dependencies(v) for k, v in sets.items()}
        sh, py = self.scripts()
        problems = []
        checked = set()
        for path in sh + py:
            rel = os.path.relpath(path, REPO)
            which = {"tools/demo.sh": "demo", "tests/minimal_debian.sh": "soak",
                     "tests/soak.sh": "soak"}.get(rel, "test")
            want = sets[which]
            funcs = set()
            if path in sh:
                with open(path) as f:
                    funcs = set(re.findall(r"(?m)^\s*([a-z_][a-z0-9_]*)\s*\(\)", f.read()))
                cmds = shell_commands(path)
            else:
                cmds = python_commands(path)
            for no, cmd in cmds:
                if cmd in funcs:
                    continue
                found = package_of(cmd)
                if found is None:
                    continue
                pkg, base = found
                checked.add(cmd)
                if not base and pkg not in want:
                    problems.append("%s:%d calls %s (package %s), which tools/deps.sh %s does "
                                    "not install" % (rel, no, cmd, pkg, which))
        self.assertGreater(len(checked), 15, "the reading found too few programs: %s" % checked)
        self.assertEqual(problems, [], "\n".join(sorted(set(problems))))

    def test_demo_set_covers_the_demo(self):
        """The demo's own needs (python3 for its sample app, curl for its check)."""
        sets = deps_sets()
        for p in ("python3", "curl", "make", "libcivetweb-dev"):
            self.assertIn(p, sets["demo"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
