#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for SECONDS seconds each (default
# 60): the config parsers of bridge, macvlan and host-local, CNI_ARGS and the CNI_* variables,
# the result/prevResult parser, and host-local's lease store reader.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (or: make fuzz FUZZ_SECONDS=...)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain; on a stable-only
# machine RUSTC_BOOTSTRAP=1 lets the stable compiler take the nightly flags. The corpus grows
# in fuzz/corpus/<target> (seeded from fuzz/seeds/<target>); a crash is saved in
# fuzz/artifacts/<target>/ and makes this script exit non-zero after the other targets ran.
# Not part of CI.
set -euo pipefail

secs=${1:-60}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi
toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    echo "fuzz.sh: no nightly toolchain; using the stable one with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
fi

# The lease store target makes a directory tree per input: on tmpfs it runs ten times faster.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi


failed=()
for t in "${targets[@]}"; do
    echo "=== $t: ${secs}s"
    mkdir -p "corpus/$t"
    dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    if ! cargo "${toolchain[@]}" fuzz run "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -dict=dicts/cni.dict -use_value_profile=1 \
        -print_final_stats=1 2>"corpus/$t.log"; then
        failed+=("$t")
        tail -40 "corpus/$t.log" >&2
    fi
    grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^Done" "corpus/$t.log" || true
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${secs}s each, no crash"
