#!/bin/sh
# Runs the integration tests against one build.
#
#   sh tests/run.sh release|asan|tsan
#
# release: binaries at the repo top (make); also runs the real-NAT test, the
#          browser test (tests/browser/run.sh) and `make fuzz-smoke` when present.
# asan:    build/asan/ (make build/asan/proxy_public build/asan/proxy_private)
# tsan:    build/tsan/
#
# Environment: BIN_DIR overrides the binaries' folder; JOBS=N runs the test
# files in N parallel lanes (default 2 for release, 3 for asan and tsan;
# 1 = one after another); PROXY_EXTRA_ARGS adds
# arguments to both programs; TESTS="test_api test_cli" runs only those files
# (and skips the NAT, browser and fuzz suites).
# Logs of every process go to tests/out/<run>/<test>/. Exit status is non-zero
# when anything failed.
set -u

MODE=${1:-release}
case "$MODE" in
release|asan|tsan) ;;
*) echo "usage: sh tests/run.sh release|asan|tsan" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.." || exit 2
# The usual umask, whatever the caller's: the programs refuse a state
# directory that others may write (as a umask of 002 or 000 would make the
# tests' own folders), and the tests compare file modes.
umask 022
REPO=$(pwd)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

if [ -z "${BIN_DIR:-}" ]; then
    if [ "$MODE" = release ]; then BIN_DIR=$REPO; else BIN_DIR=$REPO/build/$MODE; fi
fi
export BIN_DIR TEST_MODE="$MODE" PYTHONDONTWRITEBYTECODE=1
TEST_RUN=${TEST_RUN:-$MODE-$(date +%Y%m%d-%H%M%S)}
export TEST_RUN
OUT=$REPO/tests/out/$TEST_RUN
mkdir -p "$OUT"

# Per-file wall-clock limits (seconds); sanitizer builds are slower.
case "$MODE" in
release) FILE_LIMIT=600 ;;
asan) FILE_LIMIT=900 ;;
tsan) FILE_LIMIT=1200 ;;
esac

for b in proxy_public proxy_private; do
    if [ ! -x "$BIN_DIR/$b" ]; then
        echo "tests/run.sh: $BIN_DIR/$b is missing; build it first (make, or make test-$MODE)" >&2
        exit 1
    fi
done

PASSED=""
FAILED=""
record() { # name status
    if [ "$2" -eq 0 ]; then PASSED="$PASSED $1"; else FAILED="$FAILED $1"; fi
}

if [ -n "${TESTS:-}" ]; then
    FILES=""
    for t in $TESTS; do FILES="$FILES tests/${t%.py}.py"; done
else
    FILES=$(ls tests/test_*.py)
fi

# Test files run in JOBS parallel lanes: every test has its own ports,
# processes and state, so lanes never share anything.  JOBS=1 runs them one
# after another.  Default: 2 for release (its bulk and 10,000-connection
# tests want the CPU), 3 for the sanitizer builds, whose tests are slower and
# mostly wait on deadlines and timers (the TSan lane: 410 s with 2, 271 s
# with 3 on this 2-core machine).
case "$MODE" in
release) JOBS=${JOBS:-2} ;;
*) JOBS=${JOBS:-3} ;;
esac
case "$JOBS" in ''|*[!0-9]*|0) JOBS=1 ;; esac

# The longest files start first, so that the lanes end together.
# test_cluster runs real redis-server, redis-sentinel and haproxy (tools/deps.sh
# test); without them its tests skip, saying "SKIPPED: ..." and why.
LONG_FIRST="test_hostile_peer test_faults test_cluster test_preauth test_web_front test_udp test_resume"
ORDERED=""
for l in $LONG_FIRST; do
    case " $FILES " in *" tests/$l.py "*) ORDERED="$ORDERED tests/$l.py" ;; esac
done
for f in $FILES; do
    case " $ORDERED " in *" $f "*) ;; *) ORDERED="$ORDERED $f" ;; esac
done

# One lane: takes the next file nobody has taken (mkdir is atomic), runs it
# under timeout(1), and leaves the exit status in $OUT/NAME.rc.  timeout(1)
# puts itself in its own process group, so a stop of the lane is passed on.
run_lane() {
    CHILD=""
    trap '[ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null; exit 143' TERM INT
    for f in "$@"; do
        name=$(basename "$f" .py)
        mkdir "$OUT/.taken.$name" 2>/dev/null || continue
        # -k: SIGKILL if the file does not stop within 10 s of the SIGTERM.
        t0=$(date +%s)
        timeout -k 10 "$FILE_LIMIT" "$PY" "$f" >"$OUT/$name.txt" 2>&1 &
        CHILD=$!
        wait $CHILD
        rc=$?
        CHILD=""
        echo $(($(date +%s) - t0)) >"$OUT/$name.secs"
        if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
            echo "   TIMEOUT after ${FILE_LIMIT}s" >>"$OUT/$name.txt"
        fi
        echo $rc >"$OUT/$name.rc"
    done
}

START=$(date +%s)
rm -rf "$OUT"/.taken.*
echo "== integration tests, mode $MODE, binaries in $BIN_DIR, logs in $OUT, $JOBS lane(s)"
LANES=""
lane=0
while [ $lane -lt "$JOBS" ]; do
    # shellcheck disable=SC2086 # a list of file names without spaces
    run_lane $ORDERED &
    LANES="$LANES $!"
    lane=$((lane + 1))
done
trap 'kill $LANES 2>/dev/null; exit 130' INT
trap 'kill $LANES 2>/dev/null; exit 143' TERM
for p in $LANES; do wait "$p"; done
trap - INT TERM

for f in $FILES; do
    name=$(basename "$f" .py)
    echo "-- $name ($(cat "$OUT/$name.secs" 2>/dev/null || echo '?') s)"
    # Show unittest's per-test lines and any failure details.
    sed -n -e '/ \.\.\. /p' -e '/^FAIL:/p' -e '/^ERROR:/p' -e '/^Ran /p' -e '/^OK/p' \
        -e '/^FAILED/p' -e '/TIMEOUT/p' "$OUT/$name.txt" 2>/dev/null | sed 's/^/   /'
    rc=$(cat "$OUT/$name.rc" 2>/dev/null || echo 1)
    if [ "$rc" -ne 0 ]; then
        # A failure explains itself here (CI shows only this output): each
        # traceback up to its exception, at most 60 lines a file.
        awk '/^(FAIL|ERROR): /{on=1} /^(=+|Ran [0-9]+ tests?)/{if(on&&!/^(FAIL|ERROR): /)on=0}
             on{print}' "$OUT/$name.txt" 2>/dev/null | grep -v '^-*$' | head -n 60 | sed 's/^/   | /'
    fi
    record "$name" "$rc"
done

# The other suites run in release mode, unless TESTS picked some files.
if [ "$MODE" = release ] && [ -z "${TESTS:-}" ]; then
    # The fuzz smoke run (CPU) goes on beside the NAT tests, which mostly
    # wait out link cuts and timers; its result is shown after them.
    FUZZ_PID=""
    if grep -q '^fuzz-smoke:' Makefile; then
        make fuzz-smoke >"$OUT/fuzz-smoke.txt" 2>&1 &
        FUZZ_PID=$!
        trap 'kill $FUZZ_PID 2>/dev/null; exit 130' INT
        trap 'kill $FUZZ_PID 2>/dev/null; exit 143' TERM
    fi
    echo "-- nat_test"
    sh tests/nat_test.sh >"$OUT/nat_test.txt" 2>&1
    rc=$?
    tail -n 5 "$OUT/nat_test.txt" | sed 's/^/   /'
    record nat_test $rc
    echo "-- nat_linkcut"; sh tests/nat_linkcut.sh >"$OUT/nat_linkcut.txt" 2>&1; rc=$?; tail -n 5 "$OUT/nat_linkcut.txt" | sed 's/^/   /'; record nat_linkcut $rc
    echo "-- nat_resume"; NAT_OUT=$OUT/nat_resume "$PY" tests/nat_resume.py >"$OUT/nat_resume.txt" 2>&1; rc=$?; tail -n 5 "$OUT/nat_resume.txt" | sed 's/^/   /'; record nat_resume $rc
    echo "-- nat_udp"; NAT_OUT=$OUT/nat_udp "$PY" tests/nat_udp.py >"$OUT/nat_udp.txt" 2>&1; rc=$?; tail -n 5 "$OUT/nat_udp.txt" | sed 's/^/   /'; record nat_udp $rc
    echo "-- nat_ftp"; NAT_OUT=$OUT/nat_ftp "$PY" tests/nat_ftp.py >"$OUT/nat_ftp.txt" 2>&1; rc=$?; tail -n 5 "$OUT/nat_ftp.txt" | sed 's/^/   /'; record nat_ftp $rc

    if [ -f tests/browser/run.sh ]; then
        echo "-- browser"
        sh tests/browser/run.sh >"$OUT/browser.txt" 2>&1
        rc=$?
        tail -n 5 "$OUT/browser.txt" | sed 's/^/   /'
        record browser $rc
    fi

    if [ -n "$FUZZ_PID" ]; then
        echo "-- fuzz-smoke"
        wait "$FUZZ_PID"
        rc=$?
        trap - INT TERM
        tail -n 5 "$OUT/fuzz-smoke.txt" | sed 's/^/   /'
        record fuzz-smoke $rc
    fi
fi

END=$(date +%s)
echo "== summary ($MODE, $((END - START)) s): passed:${PASSED:- none}"
if [ -n "$FAILED" ]; then
    echo "== FAILED:$FAILED  (details in $OUT/)"
    exit 1
fi
echo "== all passed"
exit 0
