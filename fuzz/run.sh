#!/bin/sh
# Run libFuzzer harnesses built under build/fuzz/ (make fuzz / make fuzz-smoke).
#
#   sh fuzz/run.sh SECONDS HARNESS...
#
# For each harness: replay every file of fuzz/regressions/<harness>/ (inputs that
# once crashed, kept as tests) and of the seed corpus, then fuzz for SECONDS.
# The run starts from a copy of fuzz/corpus/<harness>/ in build/fuzz/corpus/
# (kept between runs, never in the repo). A crash leaves its input in
# build/fuzz/artifacts/<harness>/ and makes the exit status non-zero.
set -u

SECS=${1:?usage: sh fuzz/run.sh SECONDS HARNESS...}
shift
OUT=build/fuzz
FAILED=""

for h in "$@"; do
    bin=$OUT/$h
    seeds=fuzz/corpus/$h
    regs=fuzz/regressions/$h
    work=$OUT/corpus/$h
    arts=$OUT/artifacts/$h
    log=$OUT/logs/$h.log
    mkdir -p "$work" "$arts" "$OUT/logs"
    if [ ! -x "$bin" ]; then
        echo "fuzz: $bin is not built" >&2
        FAILED="$FAILED $h"
        continue
    fi
    dict=""
    [ -f "fuzz/$h.dict" ] && dict="-dict=fuzz/$h.dict"
    case "$h" in
    fuzz_api_body) maxlen=16385 ;;
    fuzz_web_head) maxlen=24576 ;;
    fuzz_config) maxlen=8192 ;;
    fuzz_proxy_header) maxlen=1024 ;;
    *) maxlen=70000 ;;
    esac

    # Regressions and seeds: each input once.
    files=$(find "$regs" "$seeds" -type f 2>/dev/null | sort)
    if [ -n "$files" ]; then
        # shellcheck disable=SC2086
        if ! "$bin" -runs=1 -timeout=10 -rss_limit_mb=2048 $files >"$log.replay" 2>&1; then
            echo "fuzz: $h FAILED replaying regressions/seeds (log: $log.replay)"
            tail -n 40 "$log.replay"
            FAILED="$FAILED $h"
            continue
        fi
        echo "fuzz: $h replayed $(echo "$files" | wc -l) regression and seed inputs"
    fi

    cp -p "$seeds"/* "$work"/ 2>/dev/null
    # shellcheck disable=SC2086
    "$bin" "$work" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len="$maxlen" \
        -print_final_stats=1 -artifact_prefix="$arts/" $dict >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ "$rc" -ne 0 ]; then
        echo "fuzz: $h FAILED after ${SECS}s budget (status $rc, log: $log)"
        grep -E 'ERROR|SUMMARY|broken promise|Test unit written' "$log" | head -n 10
        echo "      keep the input: cp $arts/<crash-file> $regs/"
        FAILED="$FAILED $h"
    else
        echo "fuzz: $h ok: ${SECS}s, ${execs:-?} inputs, corpus $(ls "$work" | wc -l) files"
    fi
done

if [ -n "$FAILED" ]; then
    echo "fuzz: FAILED:$FAILED"
    exit 1
fi
echo "fuzz: all harnesses passed"
