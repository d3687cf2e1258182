#!/usr/bin/env bash
# Brings up the project's single-node Kubernetes from upstream parts: containerd (Debian),
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and
# kube-router's network-policy controller (built from the Go module proxy by build.sh).
# Every process runs in the background with a PID file in $CLUSTER/run and a log in
# $CLUSTER/logs. On a healthy cluster this is a quick no-op ("cluster already up").
#   KIND=1 up.sh   uses kind instead (machines with a Docker engine).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${KIND:-0}" == 1 ]]; then exec bash "$CLUSTER_SCRIPTS/kind.sh" up; fi

APT_PACKAGES=(containerd runc containernetworking-plugins iptables ipset conntrack
  debootstrap buildah openssl curl gcc libc6-dev)
READY_TIMEOUT=180

# ---- helpers -------------------------------------------------------------------------

# Starts a daemon detached from our session (setsid: a Ctrl-C of `make` must not reach
# it; no inherited stdout: a caller capturing our output must not wait for it).
start_daemon() {
  local name="$1"; shift
  if pid_alive "$name"; then log "$name already running (pid $(cat "$(pidfile "$name")"))"; return; fi
  log "starting $name"
  # setsid execs in place (we are not a process-group leader), so $! is the daemon's PID.
  # The daemon inherits no descriptor but its stdio: not our lock (take_lock in lib.sh), nor
  # a caller's (`flock FILE component.sh start ...` would leave FILE locked for the daemon's
  # whole life, and every later `flock FILE` waiting forever).
  (close_inherited_fds; exec setsid "$@") </dev/null >>"$LOGS/$name.log" 2>&1 &
  local pid=$! i
  echo "$pid" >"$(pidfile "$name")"
  # Until the forked shell has exec'd, /proc/PID/cmdline is still ours, and pid_alive
  # (which checks for $CLUSTER in it) would call the daemon dead.
  for ((i = 0; i < 50; i++)); do
    pid_alive "$name" && return
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  pid_alive "$name" || { tail -n 30 "$LOGS/$name.log" >&2; die "$name did not start"; }
}

close_inherited_fds() {
  local fd
  for fd in /proc/self/fd/*; do
    fd="${fd##*/}"
    if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

# wait_until NAME TIMEOUT_S CMD...: polls CMD until it succeeds; fails early, with the
# tail of NAME's log, if NAME's process dies.
wait_until() {
  local name="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$name"; then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name exited; log: $LOGS/$name.log"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name not healthy after ${timeout}s; log: $LOGS/$name.log"
    fi
    sleep 0.5
  done
}

http_ok() { curl -fsS --max-time 2 "$@"; }
https_ok() { curl -fsSk --max-time 2 "$@"; }
kubectl_admin() { kubectl --kubeconfig "$CLUSTER/kubeconfig" "$@"; }

# ---- health of an existing cluster ---------------------------------------------------

# Written as up.sh's last step: a run that failed half-way (say, in images.sh) leaves
# running processes but no marker, and the next run starts over instead of calling it up.
UP_MARKER="$RUN/up.done"

cluster_healthy() {
  local c
  [[ -f "$UP_MARKER" ]] || return 1
  for c in "${COMPONENTS[@]}"; do pid_alive "$c" || return 1; done
  kubectl_admin get --raw /readyz >/dev/null 2>&1
}

# ---- host preparation ----------------------------------------------------------------

ensure_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  log "installing from Debian's archive: ${missing[*]}"
  # Another apt run (a colleague's script) may hold the lock: wait for it.
  local apt=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=600)
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" ||
    { apt-get -q update && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}"; }
}

# Pods may reach the host and each other, nothing else: the bridge plugin turns on IP
# forwarding, so forwarded traffic from or to the pod network that is not bridge-local
# is dropped here. Our own chain, so down.sh removes exactly what we added.
guard_forwarding() {
  cat /proc/sys/net/ipv4/ip_forward >"$CLUSTER/ip_forward.orig"
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  iptables -w -N CODEEXEC-FORWARD 2>/dev/null || iptables -w -F CODEEXEC-FORWARD
  iptables -w -A CODEEXEC-FORWARD -i "$CNI_BRIDGE" -o "$CNI_BRIDGE" -j RETURN \
    -m comment --comment "codeexec: pod to pod"
  iptables -w -A CODEEXEC-FORWARD -s "$POD_CIDR" -j DROP -m comment --comment "codeexec: pods stay on this host"
  iptables -w -A CODEEXEC-FORWARD -d "$POD_CIDR" -j DROP -m comment --comment "codeexec: pods stay on this host"
  iptables -w -C FORWARD -j CODEEXEC-FORWARD 2>/dev/null || iptables -w -I FORWARD 1 -j CODEEXEC-FORWARD
}

# ---- components ----------------------------------------------------------------------

COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet
  kube-proxy kube-router)

start_containerd() {
  mkdir -p "$CONTAINERD_ROOT" "$CONTAINERD_STATE" "$CLUSTER/containerd/runc" "$CLUSTER/containerd/runsc"
  start_daemon containerd containerd --config "$CONF/containerd.toml"
  wait_until containerd 60 ctr --address "$CONTAINERD_ADDRESS" version
}

# The kubelet's sandbox image, made locally (no registry): see pause/.
import_pause_image() {
  local archive
  if ctr --address "$CONTAINERD_ADDRESS" -n k8s.io images ls -q | grep -qxF "$PAUSE_IMAGE"; then
    return
  fi
  archive="$(bash "$CLUSTER_SCRIPTS/pause/build-pause.sh" "$PAUSE_IMAGE")"
  log "importing $PAUSE_IMAGE"
  ctr --address "$CONTAINERD_ADDRESS" -n k8s.io images import "$archive" >/dev/null
}

start_etcd() {
  mkdir -p "$CLUSTER/etcd"
  # Loopback only, plain HTTP: only the API server talks to it. No fsync: test data.
  start_daemon etcd etcd --name codeexec --data-dir "$CLUSTER/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "codeexec=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
  wait_until etcd 60 http_ok "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
}

start_apiserver() {
  # Listens on all addresses: pods reach it on the host's IP (the `kubernetes` Service's
  # endpoint, --advertise-address), host tools on 127.0.0.1.
  start_daemon kube-apiserver kube-apiserver \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$HOST_IP" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --profiling=false \
    --event-ttl 1h \
    --audit-policy-file "$CONF/audit-policy.yaml" \
    --audit-log-path "$LOGS/audit.log" --audit-log-format json \
    --audit-log-maxsize 200 --audit-log-maxbackup 1
  wait_until kube-apiserver 120 kubectl_admin get --raw /readyz
}

apply_bootstrap() {
  kubectl_admin apply -f "$CONF/bootstrap.yaml" >/dev/null
}

start_controller_manager() {
  local kc="$PKI/kube-controller-manager.kubeconfig"
  start_daemon kube-controller-manager kube-controller-manager \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --allocate-node-cidrs=true --cluster-cidr "$POD_CIDR" --node-cidr-mask-size 24 \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --profiling=false
  wait_until kube-controller-manager 60 https_ok "https://127.0.0.1:$KCM_PORT/healthz"
}

start_scheduler() {
  local kc="$PKI/kube-scheduler.kubeconfig"
  start_daemon kube-scheduler kube-scheduler \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false \
    --profiling=false
  wait_until kube-scheduler 60 https_ok "https://127.0.0.1:$SCHEDULER_PORT/healthz"
}

start_kubelet() {
  mkdir -p "$KUBELET_ROOT" "$CLUSTER/pod-logs" "$CLUSTER/kubelet-plugins"
  start_daemon kubelet kubelet --config "$CONF/kubelet.yaml" \
    --kubeconfig "$PKI/kubelet.kubeconfig" --root-dir "$KUBELET_ROOT" \
    --hostname-override "$NODE_NAME" --node-ip "$HOST_IP"
  wait_until kubelet 90 http_ok "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
}

start_kube_proxy() {
  start_daemon kube-proxy kube-proxy --config "$CONF/kube-proxy.yaml"
  wait_until kube-proxy 60 http_ok "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
}

# kube-router only as a NetworkPolicy enforcer (iptables + ipset): kube-proxy serves
# Services, the bridge plugin does pod networking.
start_kube_router() {
  start_daemon kube-router kube-router \
    --kubeconfig "$PKI/kube-router.kubeconfig" --hostname-override "$NODE_NAME" \
    --run-firewall=true --run-router=false --run-service-proxy=false \
    --enable-ipv4=true --enable-ipv6=false \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --health-port "$KUBE_ROUTER_HEALTH_PORT" --metrics-port 0 \
    --iptables-sync-period 1m --v 0
  wait_until kube-router 90 http_ok "http://127.0.0.1:$KUBE_ROUTER_HEALTH_PORT/healthz"
}

node_ready() {
  [[ "$(kubectl_admin get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

default_sa_exists() { kubectl_admin -n default get serviceaccount default; }

# The project's images (another script): built with buildah, imported into our containerd.
run_images() {
  if [[ -f "$CLUSTER_SCRIPTS/images.sh" ]]; then
    log "building and importing the project's images (images.sh)"
    bash "$CLUSTER_SCRIPTS/images.sh"
  else
    log "no e2e/cluster/images.sh yet: skipping the project's images"
  fi
}

# ---- main ----------------------------------------------------------------------------

main() {
  # One up/down at a time (make and the pytest fixture may race).
  take_lock

  if [[ -d "$CLUSTER/run" ]] && cluster_healthy; then
    log "cluster already up (kubeconfig: $CLUSTER/kubeconfig)"
    return
  fi
  if [[ -d "$CLUSTER" ]]; then
    log "found a stopped or broken cluster in $CLUSTER: removing it first"
    CODEEXEC_LOCK_HELD=1 bash "$CLUSTER_SCRIPTS/down.sh"
  fi

  local start=$SECONDS
  ensure_packages
  bash "$CLUSTER_SCRIPTS/build.sh"

  HOST_IP="$(host_ip)"
  log "node $NODE_NAME at $HOST_IP; API server https://$HOST_IP:$APISERVER_PORT"
  mkdir -p "$CLUSTER" "$LOGS" "$RUN" "$CLUSTER/conf"
  echo "$HOST_IP" >"$CLUSTER/host-ip"
  bash "$CLUSTER_SCRIPTS/pki.sh" "$HOST_IP"
  source "$CLUSTER_SCRIPTS/configs.sh"
  write_containerd_config
  write_runsc_config
  write_cni_config
  write_kubelet_config
  write_kube_proxy_config
  write_bootstrap_manifests
  write_audit_policy
  guard_forwarding

  start_containerd
  import_pause_image
  start_etcd
  start_apiserver
  apply_bootstrap
  start_controller_manager
  start_scheduler
  start_kubelet
  start_kube_proxy
  start_kube_router

  log "waiting for node $NODE_NAME to be Ready"
  wait_until kubelet "$READY_TIMEOUT" node_ready
  wait_until kube-controller-manager 60 default_sa_exists
  log "cluster up in $((SECONDS - start)) s; export KUBECONFIG=$CLUSTER/kubeconfig PATH=$K8S_BIN:\$PATH"

  run_images
  date -Is >"$UP_MARKER"
}

# Sourced (component.sh reuses the start_* functions): define only.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
