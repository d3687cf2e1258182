#!/usr/bin/env bash
# Installs the chart tooling (helm) and the test bed's tools (tinyproxy, versitygw) into ~/.cache/codeexec/bin/helm-$HELM_VERSION/, built
# from the Go module proxy: no Docker, no downloads from GitHub releases. Idempotent: a
# second run only prints the path. Prints the helm binary's path on stdout (logs on stderr).
#   bash e2e/tools.sh            -> /root/.cache/codeexec/bin/helm-v3.22.0/helm
#
# Manifests are validated against the real cluster's OpenAPI (`kubectl apply
# --dry-run=server`, see e2e/test_chart.py) rather than with kubeconform: kubeconform fetches
# its schemas from GitHub, which this machine cannot reach, and the cluster is the authority.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CODEEXEC_CACHE="${CODEEXEC_CACHE:-$HOME/.cache/codeexec}"
HELM_DIR="$CODEEXEC_CACHE/bin/helm-$HELM_VERSION"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ ! -x "$HELM_DIR/helm" ]]; then
  command -v go >/dev/null || { log "ERROR: go is needed to build helm"; exit 1; }
  log "building helm $HELM_VERSION from the Go module proxy into $HELM_DIR (a few minutes)"
  # Build into a temporary directory and rename: an interrupted build leaves no binary
  # that a later run would mistake for a finished one.
  rm -rf "$HELM_DIR.tmp"
  mkdir -p "$HELM_DIR.tmp"
  # CGO off: a static binary; version stamped so `helm version` tells the truth.
  CGO_ENABLED=0 GOBIN="$HELM_DIR.tmp" GOFLAGS=-buildvcs=false go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  rm -rf "$HELM_DIR"
  mv "$HELM_DIR.tmp" "$HELM_DIR"
  log "built $("$HELM_DIR/helm" version --short)"
fi
# versitygw (Apache-2.0): a real S3-compatible server with a plain-directory (posix) backend,
# for the S3 artifact store (tests/integration/test_files_artifacts.py starts its own
# instance on 127.0.0.1). Built from the Go module proxy like helm.
VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"
VERSITYGW_DIR="$CODEEXEC_CACHE/bin/versitygw-$VERSITYGW_VERSION"
if [[ ! -x "$VERSITYGW_DIR/versitygw" ]]; then
  log "building versitygw $VERSITYGW_VERSION from the Go module proxy into $VERSITYGW_DIR"
  rm -rf "$VERSITYGW_DIR.tmp"
  mkdir -p "$VERSITYGW_DIR.tmp"
  CGO_ENABLED=0 GOBIN="$VERSITYGW_DIR.tmp" GOFLAGS=-buildvcs=false go install -trimpath \
    -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" >&2
  rm -rf "$VERSITYGW_DIR"
  mv "$VERSITYGW_DIR.tmp" "$VERSITYGW_DIR"
fi
# tinyproxy: a real HTTP CONNECT proxy for the kubeconfig proxy-url test
# (tests/integration/test_kubeconfigs.py), from Debian's archive. The test starts its own
# instance with its own configuration; the package's service stays off.
if ! command -v tinyproxy >/dev/null; then
  log "installing tinyproxy (Debian package)"
  if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    tinyproxy >&2
  "${SUDO[@]}" systemctl disable --now tinyproxy >/dev/null 2>&1 || true
fi
printf '%s\n' "$HELM_DIR/helm"
