#!/usr/bin/env bash
# Generates the cluster's PKI and kubeconfigs with openssl into $CLUSTER/pki (never
# committed). Idempotent: existing files are kept, so a restart keeps its identities.
#   usage: pki.sh HOST_IP
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HOST_IP="${1:?usage: pki.sh HOST_IP}"
DAYS=3650

# A private key (EC P-256: fast to make, accepted everywhere in Kubernetes).
new_key() {
  [[ -s "$1" ]] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  chmod 600 "$1"
}

make_ca() {
  new_key "$PKI/ca.key"
  [[ -s "$PKI/ca.crt" ]] || openssl req -x509 -new -key "$PKI/ca.key" -days "$DAYS" \
    -subj "/CN=codeexec-local-ca" -out "$PKI/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
}

# cert NAME SUBJECT USAGE [SAN]: a leaf certificate signed by our CA.
#   USAGE is clientAuth, serverAuth or both; SAN an openssl subjectAltName list.
cert() {
  local name="$1" subj="$2" usage="$3" san="${4:-}"
  [[ -s "$PKI/$name.crt" ]] && return 0
  new_key "$PKI/$name.key"
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -z "$san" ]] || echo "subjectAltName=$san"
  } >"$ext"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days "$DAYS" -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

# kubeconfig FILE USER CERT: a kubeconfig for a client certificate. Host components talk
# to the API server over loopback.
kubeconfig() {
  local file="$1" user="$2" crt="$3"
  [[ -s "$file" ]] && return 0
  cat >"$file" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: codeexec
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$crt.crt")
    client-key-data: $(base64 -w0 "$PKI/$crt.key")
contexts:
- name: codeexec
  context: {cluster: codeexec, user: $user}
current-context: codeexec
YAML
  chmod 600 "$file"
}

main() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  make_ca

  # API server serving certificate: every name a client may use, including the
  # `kubernetes` Service's ClusterIP and the host address pods reach it on.
  local d=$CLUSTER_DOMAIN
  cert apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$d,DNS:localhost,IP:127.0.0.1,IP:$HOST_IP,IP:$KUBERNETES_SERVICE_IP"
  # The API server's client identity towards kubelets (attach/exec/logs): system:masters
  # so the kubelet's webhook authorization admits it.
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  # Kubelet serving certificate, checked by the API server against our CA.
  cert kubelet-server "/CN=$NODE_NAME" serverAuth "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$HOST_IP"

  cert admin "/O=system:masters/CN=codeexec-admin" clientAuth
  cert kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  cert kube-scheduler "/CN=system:kube-scheduler" clientAuth
  # Node authorizer and NodeRestriction recognise exactly this name and group.
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  cert kube-proxy "/CN=system:kube-proxy" clientAuth
  cert kube-router "/CN=system:kube-router" clientAuth

  # Service-account token signing pair.
  new_key "$PKI/sa.key"
  [[ -s "$PKI/sa.pub" ]] || openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

  kubeconfig "$CLUSTER/kubeconfig" codeexec-admin admin
  kubeconfig "$PKI/kube-controller-manager.kubeconfig" system:kube-controller-manager kube-controller-manager
  kubeconfig "$PKI/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler
  kubeconfig "$PKI/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet
  kubeconfig "$PKI/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  kubeconfig "$PKI/kube-router.kubeconfig" system:kube-router kube-router
}

main "$@"
