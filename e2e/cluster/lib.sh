# Shared by the cluster scripts: paths, pins, logging. Sourced, never run.
# shellcheck shell=bash disable=SC2034  # variables used by the scripts that source this

CLUSTER_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_SCRIPTS/../.." && pwd)"
# shellcheck source=versions.env
source "$CLUSTER_SCRIPTS/versions.env"

# Binaries live outside the repo so a fresh clone stays small and rebuilds are rare.
CODEEXEC_CACHE="${CODEEXEC_CACHE:-$HOME/.cache/codeexec}"
K8S_BIN="$CODEEXEC_CACHE/bin/kubernetes-$K8S_VERSION"
ETCD_BIN="$CODEEXEC_CACHE/bin/etcd-$ETCD_VERSION"
KUBE_ROUTER_BIN="$CODEEXEC_CACHE/bin/kube-router-$KUBE_ROUTER_VERSION"
CRI_TOOLS_BIN="$CODEEXEC_CACHE/bin/cri-tools-$CRI_TOOLS_VERSION"
# The directory also names our shim patch's digest: a changed patch is a new build.
GVISOR_BIN="$CODEEXEC_CACHE/bin/gvisor-$GVISOR_VERSION-$(sha256sum "$CLUSTER_SCRIPTS/gvisor/shim-containerd16.patch" | cut -c1-8)"
# The shim's conventional name (runtime_type io.containerd.runsc.v1 looks for it on PATH);
# our containerd config names it by absolute path instead (configs.sh).
GVISOR_SHIM=containerd-shim-runsc-v1

# All state of one cluster lives here; down.sh removes it.
CLUSTER="${CLUSTER:-$REPO_ROOT/.cluster}"
PKI="$CLUSTER/pki"
LOGS="$CLUSTER/logs"
RUN="$CLUSTER/run"              # PID files
CONTAINERD_ROOT="$CLUSTER/containerd/root"
CONTAINERD_STATE="$CLUSTER/containerd/state"
CONTAINERD_ADDRESS="$CONTAINERD_STATE/containerd.sock"
KUBELET_ROOT="$CLUSTER/kubelet"
CNI_CONF_DIR="$CLUSTER/cni/net.d"
CNI_BIN_DIR=/usr/lib/cni        # Debian's containernetworking-plugins
CNI_BRIDGE=codeexec0            # our own bridge name, so down.sh deletes only ours
NODE_NAME=codeexec-node
PAUSE_IMAGE=registry.k8s.io/pause:3.10

# Fixed, non-standard ports so the cluster does not collide with anything else on the
# host (another etcd, a kind cluster, a developer's API server on 6443).
ETCD_CLIENT_PORT=23790
ETCD_PEER_PORT=23800
APISERVER_PORT=16443
KCM_PORT=20257            # kube-controller-manager secure port
SCHEDULER_PORT=20259      # kube-scheduler secure port
KUBELET_PORT=20250
KUBELET_HEALTHZ_PORT=20248
KUBE_PROXY_HEALTHZ_PORT=20256
KUBE_PROXY_METRICS_PORT=20249
KUBE_ROUTER_HEALTH_PORT=20244
KUBE_ROUTER_METRICS_PORT=20245

export CONTAINERD_ADDRESS
export KUBECONFIG="$CLUSTER/kubeconfig"
# Our kubectl first: /usr/bin/kubectl on these machines is a foreign build.
export PATH="$K8S_BIN:$ETCD_BIN:$KUBE_ROUTER_BIN:$CRI_TOOLS_BIN:$PATH"

log()  { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { log "ERROR: $*"; exit 1; }

# The host's primary IPv4: the first global address of the default route's interface
# (a lookup only; nothing is sent). The API server advertises it, so pods reach the API
# server through the `kubernetes` Service, and the kubelet registers it as the node's
# InternalIP. HOST_IP in the environment overrides it.
host_ip() {
  local dev ip=""
  if [[ -n "${HOST_IP:-}" ]]; then printf '%s\n' "$HOST_IP"; return; fi
  dev="$(ip -4 route show default 2>/dev/null | awk '{for (i=1;i<NF;i++) if ($i=="dev") {print $(i+1); exit}}')"
  if [[ -n "$dev" ]]; then
    ip="$(ip -4 -o addr show dev "$dev" scope global | awk '{split($4,a,"/"); print a[1]; exit}')"
  fi
  if [[ -z "$ip" ]]; then
    ip="$(ip -4 -o addr show scope global | awk '{split($4,a,"/"); print a[1]; exit}')"
  fi
  [[ -n "$ip" ]] || die "cannot find this host's IPv4 address (set HOST_IP)"
  printf '%s\n' "$ip"
}

pidfile() { printf '%s/%s.pid\n' "$RUN" "$1"; }

# True when the process named by a PID file is alive and is ours: every daemon we start
# names $CLUSTER on its command line, so a PID reused after a reboot is never taken for it.
pid_alive() {
  local f pid
  f="$(pidfile "$1")"
  [[ -s "$f" ]] || return 1
  pid="$(cat "$f")"
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$CLUSTER"
}

# One up.sh/down.sh at a time per cluster directory. The lock file lives in the cache (not
# in $CLUSTER, which down.sh deletes, nor in the repo). A script called by one holding
# the lock sets CODEEXEC_LOCK_HELD=1.
take_lock() {
  [[ "${CODEEXEC_LOCK_HELD:-0}" == 1 ]] && return
  local dir="$CODEEXEC_CACHE/locks"
  mkdir -p "$dir"
  exec 9>"$dir/cluster-$(printf '%s' "$CLUSTER" | sha256sum | cut -c1-12).lock"
  if ! flock -n 9; then
    log "waiting for another cluster script working on $CLUSTER"
    flock 9
  fi
}
