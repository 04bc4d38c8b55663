#!/usr/bin/env bash
# Runs two busybox containers with Podman's CNI backend on a bridge network made of the plugins
# in $CNI_PATH, then removes them. Called by tests/tests/bridge.rs inside a private network
# namespace (nsenter --net=...), so the bridge and veths live there only. All Podman state is in
# a temp dir. Env: CNI_PATH, BRIDGE (bridge name), DATA_DIR (host-local dataDir).
# Prints the second container's `ip addr`; exits non-zero on any failure.
set -euo pipefail
: "${CNI_PATH:?}" "${BRIDGE:?}" "${DATA_DIR:?}"
WORK=$(mktemp -d /tmp/cni-podman.XXXXXX)
NET=rspodman
IMG=localhost/cnirs-busybox:latest
A=cnirs-a-$$
B=cnirs-b-$$
export CONTAINERS_CONF=$WORK/containers.conf
pm() { podman --root "$WORK/root" --runroot "$WORK/runroot" --storage-driver vfs "$@"; }
cleanup() {
  set +e
  pm rm -f -t 0 "$A" "$B" >/dev/null 2>&1
  pm rmi -f "$IMG" >/dev/null 2>&1
  grep " $WORK/" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount "$m"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/net.d" "$WORK/rootfs/bin" "$WORK/tmp"
dirs=$(echo "$CNI_PATH" | tr ':' '\n' | sed 's/.*/"&"/' | paste -sd, -)
cat >"$CONTAINERS_CONF" <<CONF
[network]
network_backend = "cni"
cni_plugin_dirs = [$dirs]
network_config_dir = "$WORK/net.d"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/events.log"
runtime = "runc"
tmp_dir = "$WORK/tmp"
CONF
cat >"$WORK/net.d/$NET.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "$NET",
 "plugins": [{"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true,
              "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.71.0.0/24"}]], "dataDir": "$DATA_DIR"}}]}
JSON
bb=$(command -v busybox)
cp "$bb" "$WORK/rootfs/bin/busybox"
for a in sh ip ping sleep; do ln -s busybox "$WORK/rootfs/bin/$a"; done
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
pm import -q "$WORK/rootfs.tar" "$IMG" >/dev/null
[ "$(pm info --format '{{.Host.NetworkBackend}}')" = cni ] || { echo "podman backend is not cni" >&2; exit 1; }
opts=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network "$NET")
pm run -d --name "$A" "${opts[@]}" "$IMG" /bin/sleep 60 >/dev/null
ipa=$(pm inspect --format "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$A")
nsa=$(basename "$(pm inspect --format '{{.NetworkSettings.SandboxKey}}' "$A")")
echo "container A: $ipa (netns $nsa)"
[ -f "$DATA_DIR/$NET/$ipa" ] || { echo "no lease file for $ipa" >&2; exit 1; }
pm run --name "$B" --cap-add NET_RAW "${opts[@]}" "$IMG" /bin/sh -c "ip addr show eth0; ping -c1 -W2 $ipa"
pm rm -f -t 0 "$A" "$B" >/dev/null
if [ -e "/run/netns/$nsa" ]; then echo "podman netns $nsa left behind" >&2; exit 1; fi
echo "removed"
