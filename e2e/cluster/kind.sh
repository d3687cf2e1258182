#!/usr/bin/env bash
# The KIND=1 path of `make cluster-up` / `make cluster-down`, for machines with a Docker
# engine: kind does the work. Kept thin on purpose (our machines have no Docker, so it
# cannot be exercised here). Writes the same $CLUSTER/kubeconfig as our own cluster, so
# the test fixtures do not care which one runs.
#   usage: kind.sh up|down
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KIND_CLUSTER_NAME="${KIND_CLUSTER_NAME:-codeexec}"
export KIND_CLUSTER_NAME

need() { command -v "$1" >/dev/null || die "KIND=1 needs $1 on PATH"; }

up() {
  need kind
  need docker
  mkdir -p "$CLUSTER"
  if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER_NAME"; then
    log "kind cluster $KIND_CLUSTER_NAME already up"
  else
    # kind's default node image unless KIND_NODE_IMAGE names one (kind publishes node
    # images per release; pick one of Kubernetes $K8S_VERSION's minor to match ours).
    # kind's default CNI (kindnet) enforces NetworkPolicy since kind v0.24.
    kind create cluster --name "$KIND_CLUSTER_NAME" \
      ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s
  fi
  kind get kubeconfig --name "$KIND_CLUSTER_NAME" >"$CLUSTER/kubeconfig"
  chmod 600 "$CLUSTER/kubeconfig"
  # The project's images, loaded into the kind node (images.sh honours KIND=1).
  if [[ -f "$CLUSTER_SCRIPTS/images.sh" ]]; then KIND=1 bash "$CLUSTER_SCRIPTS/images.sh"; fi
  # The same completion marker as up.sh: the test fixtures look for it.
  mkdir -p "$RUN" && date -Is >"$RUN/up.done"
  log "kind cluster up; KUBECONFIG=$CLUSTER/kubeconfig"
}

down() {
  need kind
  kind delete cluster --name "$KIND_CLUSTER_NAME"
  rm -rf "$CLUSTER"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) die "usage: kind.sh up|down" ;;
esac
