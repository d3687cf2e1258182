#!/usr/bin/env bash
# Stops the local cluster and removes its state: every process up.sh started (by PID
# file), then whatever of ours is left (containerd shims, runc, pod processes), the mounts
# under $CLUSTER, the CNI bridge, the iptables chains and ipsets of kube-proxy, the kubelet
# and kube-router, and $CLUSTER itself. Idempotent; fails if something of ours survives.
#   KIND=1 down.sh   deletes the kind cluster instead.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${KIND:-0}" == 1 ]]; then exec bash "$CLUSTER_SCRIPTS/kind.sh" down; fi

# Stopped in groups, each group at once: first everything that may act on the cluster
# (the kubelet would restart containers we remove), then the pods through the CRI, then
# the datastore and the runtime.
STOP_GROUPS=("kube-router kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver"
  "etcd" "containerd")
OUR_PORTS=("$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KCM_PORT"
  "$SCHEDULER_PORT" "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" "$KUBE_PROXY_HEALTHZ_PORT"
  "$KUBE_PROXY_METRICS_PORT" "$KUBE_ROUTER_HEALTH_PORT")

# Stops the PIDs given: TERM, up to 10 s of grace, then KILL.
stop_pids() {
  local pid i alive
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
}

# Removes every pod through the CRI while containerd still runs, so the CNI plugins
# release addresses and veths and containerd unmounts network namespaces itself.
remove_pods() {
  pid_alive containerd || return 0
  [[ -S "$CONTAINERD_ADDRESS" ]] || return 0
  if command -v crictl >/dev/null; then
    timeout 60 crictl --runtime-endpoint "unix://$CONTAINERD_ADDRESS" --timeout 30s rmp -af >/dev/null 2>&1 ||
      log "crictl rmp failed; killing what is left instead"
  fi
}

stop_components() {
  local group c pids names
  for group in "${STOP_GROUPS[@]}"; do
    [[ "$group" == containerd ]] && remove_pods
    pids=() names=()
    for c in $group; do
      if pid_alive "$c"; then
        pids+=("$(cat "$(pidfile "$c")")")
        names+=("$c")
      fi
      rm -f "$(pidfile "$c")"
    done
    ((${#pids[@]})) || continue
    log "stopping ${names[*]}"
    stop_pids "${pids[@]}"
  done
}

# PIDs of processes that are ours although no PID file names them: our binaries (the
# cluster's cache, containerd, its shims, runc) whose command line names $CLUSTER
# (shims carry our socket path, runc our state root), plus every descendant of our shims
# (the pods' processes).
our_leftovers() {
  local pid exe cmd shims=()
  for pid in /proc/[0-9]*; do
    pid="${pid#/proc/}"
    [[ "$pid" == "$$" ]] && continue
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || continue
    exe="${exe% (deleted)}"
    case "$exe" in
      "$CODEEXEC_CACHE"/bin/* | */containerd | */containerd-shim* | */runc) ;;
      *) continue ;;
    esac
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || continue
    [[ "$cmd" == *"$CLUSTER"* ]] || continue
    echo "$pid"
    [[ "$exe" == */containerd-shim* ]] && shims+=("$pid")
  done
  local s
  for s in "${shims[@]}"; do descendants "$s"; done
}

descendants() {
  local child
  # shellcheck disable=SC2013  # the file is a space-separated list of PIDs
  for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}

kill_leftovers() {
  local pids
  pids="$(our_leftovers | sort -u)"
  [[ -z "$pids" ]] && return
  log "killing leftover processes of this cluster: ${pids//$'\n'/ }"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  sleep 0.5
}

# Mounts under $CLUSTER (overlay rootfs, netns, pod volumes), deepest first.
unmount_all() {
  local m
  awk -v root="$CLUSTER/" 'index($5, root) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
    done
}

remove_network() {
  local link
  # veths still attached to our bridge (their pod is gone), then the bridge.
  for link in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 || true); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$CNI_BRIDGE" 2>/dev/null || true
  rm -rf /var/lib/cni/results/codeexec-pods-* 2>/dev/null || true
  if [[ -s "$CLUSTER/ip_forward.orig" ]]; then
    cat "$CLUSTER/ip_forward.orig" >/proc/sys/net/ipv4/ip_forward
  fi
}

# Removes our iptables chains: kube-proxy's, the kubelet's and kube-router's (all KUBE-*),
# the portmap plugin's (CNI-HOSTPORT-*, CNI-DN-*) and our CODEEXEC-FORWARD guard. First
# the rules in other chains that jump to them, then the chains.
flush_iptables() {
  local cmd="$1" table rule chain
  command -v "$cmd" >/dev/null || return 0
  local ours='(KUBE-|CNI-HOSTPORT-|CNI-DN-|CODEEXEC-)'
  for table in filter nat mangle raw; do
    "$cmd" -w -t "$table" -S >/dev/null 2>&1 || continue
    # Rules of other chains that jump to ours.
    while read -r rule; do
      # shellcheck disable=SC2086
      eval "$cmd -w -t $table -D ${rule#-A }" 2>/dev/null || true
    done < <("$cmd" -w -t "$table" -S | grep -E -- "^-A .* -j $ours" | grep -vE "^-A $ours" || true)
    local chains
    chains="$("$cmd" -w -t "$table" -S | awk '$1 == "-N" {print $2}' | grep -E "^$ours" || true)"
    for chain in $chains; do "$cmd" -w -t "$table" -F "$chain" 2>/dev/null || true; done
    for chain in $chains; do "$cmd" -w -t "$table" -X "$chain" 2>/dev/null || true; done
  done
}

# kube-router's ipsets (its network-policy controller names them KUBE-*).
destroy_ipsets() {
  command -v ipset >/dev/null || return 0
  local s
  for s in $(ipset list -n 2>/dev/null | grep -E '^KUBE-' || true); do
    ipset destroy "$s" 2>/dev/null || true
  done
}

# The kubelet's pod cgroups (cgroupfs driver), deepest first; empty once pods are gone.
remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [[ -d "$d" ]] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

verify_nothing_left() {
  local left ports p
  left="$(our_leftovers | sort -u)"
  [[ -z "$left" ]] || die "processes of this cluster still running: ${left//$'\n'/ }"
  ports=""
  for p in "${OUR_PORTS[@]}"; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then ports+=" $p"; fi
  done
  [[ -z "$ports" ]] || die "ports of this cluster still listening:$ports"
}

main() {
  take_lock
  if [[ ! -d "$CLUSTER" ]] && [[ -z "$(our_leftovers)" ]]; then
    log "no cluster in $CLUSTER: nothing to stop"
    return
  fi
  stop_components
  kill_leftovers
  unmount_all
  remove_network
  flush_iptables iptables
  flush_iptables ip6tables
  destroy_ipsets
  remove_cgroups
  verify_nothing_left
  # --one-file-system: never follow a mount we failed to remove.
  rm -rf --one-file-system "$CLUSTER"
  log "cluster stopped and $CLUSTER removed"
}

main "$@"
