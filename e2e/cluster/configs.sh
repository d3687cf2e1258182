# Config files of the cluster's components, written into $CLUSTER/conf. Sourced by up.sh
# after lib.sh, with HOST_IP set.
# shellcheck shell=bash disable=SC2034  # variables used by the scripts that source this

CONF="$CLUSTER/conf"
# The node's pod subnet: the controller-manager gives the only node the first /24 of
# POD_CIDR, and the CNI config hands out addresses from the same /24.
NODE_POD_CIDR="${POD_CIDR%.*.*}.0.0/24"
NODE_POD_GATEWAY="${POD_CIDR%.*.*}.0.1"

write_containerd_config() {
  cat >"$CONF/containerd.toml" <<EOF
# containerd for the codeexec local cluster; all state under $CLUSTER.
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
# Snapshotters this machine cannot use only add log noise.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$CONTAINERD_ADDRESS"

[ttrpc]
  address = "$CONTAINERD_ADDRESS.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CLUSTER/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE: without this runc cannot write oom_score_adj and
  # every sandbox fails to start.
  restrict_oom_score_adj = true
  # Keep network namespaces under our state dir instead of /var/run/netns.
  netns_mounts_under_state_dir = true
  # The streaming server (attach/exec for the kubelet) on loopback only.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  max_container_log_line_size = 16384

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    # Images are imported, never pulled: keep their layers.
    discard_unpacked_layers = false

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroupfs, like the kubelet: there is no systemd on these machines.
        SystemdCgroup = false
        # runc's state under our directory instead of /run/containerd/runc.
        Root = "$CLUSTER/containerd/runc"

    # gVisor (RuntimeClass gvisor, handler gvisor): runsc through its own shim, named by
    # its absolute path (containerd 1.6 takes a path as runtime_type), so a containerd
    # started with any PATH finds it. runc stays the default.
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor]
      runtime_type = "$GVISOR_BIN/$GVISOR_SHIM"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.gvisor.options]
        TypeUrl = "io.containerd.runsc.v1.options"
        ConfigPath = "$CONF/runsc.toml"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
    max_conf_num = 1
EOF
}

# The gVisor shim's options: which runsc (containerd 1.6 ignores runtime_path for pod
# sandboxes), its state root under $CLUSTER (down.sh finds and removes what is ours by that
# path), and runsc's flags.
write_runsc_config() {
  cat >"$CONF/runsc.toml" <<EOF
binary_name = "$GVISOR_BIN/runsc"
root = "$CLUSTER/containerd/runsc"

[runsc_config]
  # systrap: ptrace works too (1.5-2x slower); kvm needs nested virtualisation.
  platform = "systrap"
  # No oci-seccomp: with it, runsc's translation of containerd's RuntimeDefault profile made
  # every thread creation of Node.js fail (uv_thread_create, abort at start). The Sentry is
  # the boundary, and the supervisor's own seccomp filter still applies inside (confine.py).
EOF
}

write_cni_config() {
  mkdir -p "$CNI_CONF_DIR"
  # ipMasq off and a FORWARD guard in up.sh: pods reach only the host and each other.
  cat >"$CNI_CONF_DIR/10-codeexec.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "codeexec-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

write_kubelet_config() {
  cat >"$CONF/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "$HOST_IP"
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
containerRuntimeEndpoint: "unix://$CONTAINERD_ADDRESS"
cgroupDriver: cgroupfs
failSwapOn: false
tlsCertFile: "$PKI/kubelet-server.crt"
tlsPrivateKeyFile: "$PKI/kubelet-server.key"
# The API server proxies attach/exec/logs to the kubelet: authenticate it by its client
# certificate, authorize every request through the API server (SubjectAccessReview).
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization:
  mode: Webhook
# No DNS server runs in this cluster (see docs/testbed.md).
resolvConf: "$CONF/resolv.conf"
clusterDomain: "$CLUSTER_DOMAIN"
podLogsDir: "$CLUSTER/pod-logs"
volumePluginDir: "$CLUSTER/kubelet-plugins"
podPidsLimit: 1024
# make soak holds 200 warm pods beside the rest; the node's /24 has 253 addresses.
maxPods: 250
# emptyDir sizeLimit and ephemeral-storage limits need this.
localStorageCapacityIsolation: true
serializeImagePulls: false
# Our images are imported, not pulled: image GC must never remove them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 87600h
# A busy developer disk must not make the kubelet evict test pods.
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
  imagefs.inodesFree: "1%"
evictionPressureTransitionPeriod: 30s
# Pod status reaches the API server sooner: tests wait on it.
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
# These machines mount cgroup v1 controllers. 1.34 still runs on v1 by default; said
# explicitly so a version bump keeps working or fails loudly.
failCgroupV1: false
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
protectKernelDefaults: false
EOF
  # Pods resolve names against their own loopback: a lookup fails fast inside the pod's
  # network namespace instead of sending queries off the machine.
  cat >"$CONF/resolv.conf" <<EOF
nameserver 127.0.0.1
options timeout:1 attempts:1
EOF
}

write_kube_proxy_config() {
  cat >"$CONF/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: "$PKI/kube-proxy.kubeconfig"
hostnameOverride: "$NODE_NAME"
clusterCIDR: "$POD_CIDR"
bindAddress: 127.0.0.1
healthzBindAddress: "127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT"
metricsBindAddress: "127.0.0.1:$KUBE_PROXY_METRICS_PORT"
# Leave the host's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  # true would set route_localnet on the host.
  localhostNodePorts: false
  syncPeriod: 10s
  minSyncPeriod: 1s
nodePortAddresses: ["$HOST_IP/32"]
EOF
}

# Every write the API server accepts, one JSON line each (who, verb, resource), so the bench
# can count a cluster's writes per execution by component (docs/benchmarks.md). Reads are not
# logged: a write costs the API server one ~1 KB line, a read would cost the same for nothing.
write_audit_policy() {
  cat >"$CONF/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
EOF
}

# RBAC for kube-router's network-policy controller: it runs on the host with its own
# client certificate (user system:kube-router). Upstream's daemonset manifest grants the same.
# Also the RuntimeClass gvisor (the containerd runtime of the same name, see above).
write_bootstrap_manifests() {
  cat >"$CONF/bootstrap.yaml" <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: codeexec:kube-router
rules:
- apiGroups: [""]
  resources: [namespaces, pods, services, nodes, endpoints]
  verbs: [list, get, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, get, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, get, watch]
- apiGroups: [""]
  resources: [nodes]
  verbs: [patch, update]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch, update]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: codeexec:kube-router
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "codeexec:kube-router"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:kube-router}
---
# Pods with runtimeClassName: gvisor run under gVisor (containerd's runtime "gvisor");
# pods without one keep runc.
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: gvisor
handler: gvisor
EOF
}
