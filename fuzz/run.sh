#!/bin/bash
# Run every fuzz target (or those named) for SECONDS each, one after the other.
#   fuzz/run.sh [SECONDS] [TARGET...]        e.g. fuzz/run.sh 600; fuzz/run.sh 60 unpack filter
# Seeds are fuzz/corpus/<target>/ (committed, never written); what libFuzzer finds on the way
# goes to fuzz/work/<target>/ (ignored by git) and is reused by the next run. A crash leaves its
# input in fuzz/artifacts/<target>/ and makes this script exit non-zero.
# Needs cargo-fuzz (cargo install cargo-fuzz --locked); RUSTC_BOOTSTRAP=1 lets it use the
# nightly-only flags on the stable toolchain. FUZZ_JOBS=N runs N targets at a time.
set -eu
cd "$(dirname "$0")"
secs=${1:-180}
[ $# -gt 0 ] && shift
targets=${*:-"unpack decompress reference manifest filter oci_spec cni_result journal"}
export RUSTC_BOOTSTRAP=1
# ASan on (cargo-fuzz's default) to catch memory errors in C (zlib-rs is Rust, but libc/nix
# calls are not); debug assertions and overflow checks are on in cargo-fuzz builds.
cargo fuzz build ${FUZZ_BUILD_FLAGS:-}
status=0
run_one() {
    t=$1
    mkdir -p "work/$t" "artifacts/$t"
    log="work/$t.log"
    # -rss_limit_mb bounds memory (a bomb or a huge allocation is a finding); -timeout a hang.
    if cargo fuzz run ${FUZZ_BUILD_FLAGS:-} "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -max_len=65536 \
        -print_final_stats=1 >"$log" 2>&1; then
        echo "$t: ok, $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') runs in ${secs}s, corpus $(ls "work/$t" | wc -l) inputs ($(du -sk "work/$t" | cut -f1) KiB)"
    else
        echo "$t: FINDING, see $log and artifacts/$t/"
        return 1
    fi
}
jobs=${FUZZ_JOBS:-1}
pids=()
for t in $targets; do
    run_one "$t" &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$jobs" ]; then
        wait "${pids[0]}" || status=1
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do
    wait "$p" || status=1
done
exit $status
