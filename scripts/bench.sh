#!/usr/bin/env bash
# make bench: our bridge, macvlan and host-local (target/<host triple>/release) against the reference plugins
# (/usr/lib/cni), side by side in one run, everything in private network namespaces that are
# always removed. Writes BENCHMARKS.md, docs/bench-scale.svg and target/bench/results.json.
#
# Usage (as root): scripts/bench.sh [--quick] [--cycles N] [--only version,host-local,bridge,
#                  macvlan,bigconf,conc,scale,trace,cnitool] [--ours DIR] [--reference DIR] [--out DIR]
#        then cni-bench-etcd: the etcd store's rows (skipped when BENCH_ONLY lacks "etcd";
#        BENCH_ONLY=etcd runs them alone)
# Env: QUICK=1 (smoke run, writes to target/bench-quick/), BENCH_CYCLES (50), BENCH_WARMUP (3),
#      BENCH_CONC (64), BENCH_CONC_ROUNDS (5), BENCH_LEASES (0,1000,10000,50000),
#      BENCH_SCALE_CYCLES, BENCH_SCALE_BRIDGE_CYCLES (20), BENCH_TRACE_CYCLES,
#      BENCH_BIGCONF_CYCLES (10), BENCH_ONLY, BENCH_TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}

if [ "$(id -u)" != 0 ]; then
  echo "bench: run as root: it creates network namespaces (nothing outside them is touched)" >&2
  exit 1
fi
if ! command -v ip >/dev/null; then
  echo "bench: ip (iproute2) missing: run 'make deps'" >&2
  exit 1
fi
for p in bridge macvlan host-local; do
  if [ ! -x "${BENCH_REFERENCE:-/usr/lib/cni}/$p" ]; then
    echo "bench: reference plugin ${BENCH_REFERENCE:-/usr/lib/cni}/$p missing: run 'make deps'" >&2
    exit 1
  fi
done

# Under make the 'build' prerequisite has just built everything (static release binaries in
# $RELEASE_DIR); alone, build what we measure the same way.
if [ -z "${MAKELEVEL:-}" ] || [ -z "${RELEASE_DIR:-}" ]; then
  triple=$(rustc -vV | sed -n 's/^host: //p')
  RELEASE_DIR=target/$triple/release
  RUSTFLAGS="${RELEASE_RUSTFLAGS:--C target-feature=+crt-static -C relocation-model=static}" \
    "$CARGO" build --release --workspace --bins --target "$triple"
fi

export BENCH_VIA=${BENCH_VIA:-scripts/bench.sh}
export BENCH_OURS=${BENCH_OURS:-$RELEASE_DIR}
if [ "${BENCH_ONLY:-}" != etcd ]; then
  "$RELEASE_DIR/cni-bench" "$@"
fi
# The etcd store's rows (a local 3-member cluster): a section of the same BENCHMARKS.md.
if [ -z "${BENCH_ONLY:-}" ] || [[ ",$BENCH_ONLY," == *",etcd,"* ]]; then
  # The options it shares with cni-bench, as its environment.
  etcd_quick=${QUICK:-} etcd_out=${BENCH_OUT:-} etcd_ours=$BENCH_OURS etcd_cycles=${BENCH_CYCLES:-}
  while [ $# -gt 0 ]; do
    case $1 in
      --quick) etcd_quick=1 ;;
      --out) etcd_out=$2; shift ;;
      --ours) etcd_ours=$2; shift ;;
      --cycles) etcd_cycles=$2; shift ;;
    esac
    shift
  done
  QUICK=$etcd_quick BENCH_OUT=$etcd_out BENCH_OURS=$etcd_ours BENCH_CYCLES=$etcd_cycles \
    "$RELEASE_DIR/cni-bench-etcd"
fi
