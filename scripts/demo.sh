#!/usr/bin/env bash
# A first ADD and DEL with cnitool: the installed bridge + host-local plugins on a conf-example,
# in a scratch "host" namespace and a scratch container namespace; prints the result, checks the
# address inside the container, lists the attachment, deletes it, then gives one command a
# network of its own with `cnitool exec`. Configs, cache and leases go to a temp dir; both
# namespaces are removed. Nothing on the machine's own interfaces, routes or firewall is touched.
set -euo pipefail
BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CNITOOL=${CNITOOL:-$(command -v cnitool || echo /usr/local/bin/cnitool)}
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
# The conf-example with its leases in the temp dir.
mkdir -p "$DATA/net.d"
jq --arg d "$DATA/leases" '.plugins[0].ipam.dataDir = $d' "$CONF" > "$DATA/net.d/$(basename "$CONF")"
NET=$(jq -r .name "$CONF")
tool() {
  ip netns exec "$HOST" env NETCONFPATH="$DATA/net.d" CNI_PATH="$BIN_DIR" CNI_CACHE_DIR="$DATA/cache" \
    "$CNITOOL" "$@"
}
echo "== cnitool lint $NET"
tool lint "$NET"
echo "== cnitool add $NET /run/netns/$CTR (plugins from $BIN_DIR)"
tool add "$NET" "/run/netns/$CTR"
echo "== inside the container namespace:"
ip -n "$CTR" -br addr show dev eth0
ip -n "$CTR" route
echo "== cnitool list"
tool list
echo "== cnitool del"
tool del "$NET" "/run/netns/$CTR" && echo "DEL ok"
if ip -n "$CTR" link show eth0 >/dev/null 2>&1; then echo "eth0 still there after DEL" >&2; exit 1; fi
echo "== cnitool exec $NET -- sh -c '...': a command with a network of its own"
tool exec "$NET" -- sh -c 'echo "address $CNI_RESULT_IP in $CNITOOL_NETNS"; ping -c1 -W2 "$(ip route show default | cut -d" " -f3)" | head -2'
# Lease files are named after their address (the store also holds lock, last_reserved_ip.N and
# an index directory).
left=$(ls "$DATA"/leases/*/ 2>/dev/null | grep -E '^[0-9.]+$|:' || true)
if [ -n "$left" ]; then echo "leases left after DEL: $left" >&2; exit 1; fi
if [ -n "$(ls "$DATA/cache/results" 2>/dev/null)" ]; then echo "attachments left in the cache" >&2; exit 1; fi
echo "== done: eth0, the exec's namespace, the leases and the cache entries are gone"
