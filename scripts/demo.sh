#!/usr/bin/env bash
# A first ADD and DEL: runs the installed bridge + host-local plugins on a conf-example, in a
# scratch "host" namespace and a scratch container namespace, prints the result, checks the
# address inside the container, deletes it again, and removes both namespaces.
# Nothing on the machine's own interfaces, routes or firewall is touched.
set -euo pipefail
BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CONF=${1:-conf-examples/bridge.conflist}
HOST=cnidemo-host-$$
CTR=cnidemo-ctr-$$
DATA=$(mktemp -d /tmp/cnidemo.XXXXXX)
cleanup() {
  ip netns del "$CTR" 2>/dev/null || true
  ip netns del "$HOST" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
ip netns add "$HOST"
ip netns add "$CTR"
# One plugin config out of the conflist, as a runtime would build it; leases go to a temp dir.
NET=$(jq --arg d "$DATA" '.plugins[0] + {cniVersion: .cniVersion, name: .name} | .ipam.dataDir = $d' "$CONF")
run() {
  ip netns exec "$HOST" env CNI_COMMAND="$1" CNI_CONTAINERID=demo-$$ CNI_NETNS="/run/netns/$CTR" \
    CNI_IFNAME=eth0 CNI_PATH="$BIN_DIR" "$BIN_DIR/$(jq -r .type <<<"$NET")" <<<"$NET"
}
echo "== ADD ($CONF, plugins from $BIN_DIR)"
run ADD | jq .
echo "== inside the container namespace:"
ip -n "$CTR" -br addr show dev eth0
ip -n "$CTR" route
echo "== DEL"
run DEL && echo "DEL ok"
if ip -n "$CTR" link show eth0 >/dev/null 2>&1; then echo "eth0 still there after DEL" >&2; exit 1; fi
# Lease files are named after their address (the store also holds lock, last_reserved_ip.N and
# an index directory).
left=$(ls "$DATA"/*/ 2>/dev/null | grep -E '^[0-9.]+$|:' || true)
if [ -n "$left" ]; then echo "leases left after DEL: $left" >&2; exit 1; fi
echo "== done: eth0 and the lease are gone"
