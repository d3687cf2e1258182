#!/usr/bin/env bash
# Builds the cluster's binaries from the Go module proxy into ~/.cache/codeexec/bin/,
# one directory per pinned version (versions.env). A component whose binaries already
# exist is skipped, so a second run is a no-op and a pin change rebuilds only that part.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUILD_DIR="$CODEEXEC_CACHE/build"
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

# Prints one progress line every 100 packages `go build -v` reports, and keeps the full
# list in the build log: the Kubernetes build compiles ~3000 packages and takes a while.
progress() {
  local name="$1" logf="$2"
  awk -v name="$name" '{ print >> LOG; fflush(LOG); n++;
      if (n % 100 == 0) { printf "[build %s] %d packages compiled (last: %s)\n", name, n, $0; fflush() } }
      END { printf "[build %s] %d packages compiled\n", name, n }' LOG="$logf"
}

have_all() {
  local dir="$1"; shift
  local b
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

# Runs a go build, showing progress and the wall time. A failed build leaves no binary.
go_build() {
  local name="$1" moddir="$2" out="$3"; shift 3
  local logf="$moddir/build.log" start=$SECONDS
  : >"$logf"
  log "building $name into $out (log: $logf)"
  mkdir -p "$out.tmp"
  # CGO off: static binaries, no C toolchain dependency; -mod=mod lets the wrapper module
  # fill in its go.sum from the proxy on first build.
  if ! (cd "$moddir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -v -trimpath -o "$out.tmp/" "$@" 2>&1) | progress "$name" "$logf"; then
    die "build of $name failed; see $logf"
  fi
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "built $name in $((SECONDS - start)) s"
  echo "$name $((SECONDS - start))s $(date -Is)" >>"$CODEEXEC_CACHE/build-times.log"
}

# A throwaway module that requires the target module. Kubernetes' own go.mod replaces
# its staging modules (k8s.io/api, ...) with ./staging paths, which `go install pkg@v`
# refuses; the wrapper replaces each with the published v0.X.Y instead.
write_wrapper() {
  local moddir="$1" modpath="$2" version="$3" replaces="$4"
  mkdir -p "$moddir"
  {
    echo "module codeexec.local/build/$(basename "$moddir")"
    echo
    echo "go 1.24.0"
    echo
    echo "require $modpath $version"
    if [[ -n "$replaces" ]]; then
      echo
      echo "replace ("
      printf '%s\n' "$replaces"
      echo ")"
    fi
  } >"$moddir/go.mod.new"
  # Keep the existing go.mod/go.sum when unchanged so a rebuild reuses them.
  if ! cmp -s "$moddir/go.mod.new" "$moddir/go.mod.src" 2>/dev/null; then
    cp "$moddir/go.mod.new" "$moddir/go.mod"
    cp "$moddir/go.mod.new" "$moddir/go.mod.src"
    rm -f "$moddir/go.sum"
  fi
  rm -f "$moddir/go.mod.new"
}

build_kubernetes() {
  local v="$K8S_VERSION" out="$K8S_BIN" moddir="$BUILD_DIR/kubernetes-$K8S_VERSION"
  if have_all "$out" "${K8S_COMMANDS[@]}"; then log "kubernetes $v: cached in $out"; return; fi
  # Staging modules are published as v0.<minor>.<patch> of the same release.
  local staging_version="v0.${v#v1.}"
  local gomod
  gomod="$(cd /tmp && go mod download -json "k8s.io/kubernetes@$v" | awk -F'"' '/"GoMod"/ {print $4}')"
  [[ -f "$gomod" ]] || die "cannot download k8s.io/kubernetes@$v from the Go module proxy"
  local replaces
  replaces="$(awk -v sv="$staging_version" '$2 == "=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s %s\n", $1, $1, sv }' "$gomod")"
  [[ -n "$replaces" ]] || die "no staging replaces found in $gomod"
  write_wrapper "$moddir" k8s.io/kubernetes "$v" "$replaces"

  local minor="${v#v1.}"; minor="${minor%%.*}"
  local vpkg=k8s.io/component-base/version cpkg=k8s.io/client-go/pkg/version
  local ld="-s -w"
  local p
  for p in "$vpkg" "$cpkg"; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  local pkgs=()
  for p in "${K8S_COMMANDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$p"); done
  # One invocation for all commands: they share most packages.
  go_build "kubernetes-$v" "$moddir" "$out" -ldflags "$ld" "${pkgs[@]}"
}

build_etcd() {
  local v="$ETCD_VERSION" out="$ETCD_BIN" moddir="$BUILD_DIR/etcd-$ETCD_VERSION"
  if have_all "$out" etcd; then log "etcd $v: cached in $out"; return; fi
  write_wrapper "$moddir" go.etcd.io/etcd/server/v3 "$v" ""
  mkdir -p "$moddir/etcd"
  # etcd's own main is a one-liner around etcdmain; the server module has no main package.
  cat >"$moddir/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go_build "etcd-$v" "$moddir" "$out" -ldflags "-s -w" ./etcd
}

build_kube_router() {
  local v="$KUBE_ROUTER_VERSION" out="$KUBE_ROUTER_BIN" moddir="$BUILD_DIR/kube-router-$KUBE_ROUTER_VERSION"
  if have_all "$out" kube-router; then log "kube-router $v: cached in $out"; return; fi
  write_wrapper "$moddir" github.com/cloudnativelabs/kube-router/v2 "$v" ""
  go_build "kube-router-$v" "$moddir" "$out" \
    -ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$v" \
    github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
}

build_crictl() {
  local v="$CRI_TOOLS_VERSION" out="$CRI_TOOLS_BIN" moddir="$BUILD_DIR/cri-tools-$CRI_TOOLS_VERSION"
  if have_all "$out" crictl; then log "crictl $v: cached in $out"; return; fi
  write_wrapper "$moddir" sigs.k8s.io/cri-tools "$v" ""
  go_build "cri-tools-$v" "$moddir" "$out" \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$v" sigs.k8s.io/cri-tools/cmd/crictl
}

# gVisor's runsc and its containerd shim (installed as containerd-shim-runsc-v1), static:
# runsc re-executes itself inside an empty root, where a dynamic loader would be missing.
# The shim gets our two changes for containerd 1.6 (gvisor/shim-containerd16.patch) in
# this build's own copy of the module source, which the wrapper module's `replace` names.
build_gvisor() {
  local v="$GVISOR_VERSION" out="$GVISOR_BIN" moddir="$BUILD_DIR/gvisor-$GVISOR_VERSION"
  local patchfile="$CLUSTER_SCRIPTS/gvisor/shim-containerd16.patch"
  if have_all "$out" runsc "$GVISOR_SHIM"; then log "gvisor $v: cached in $out"; return; fi
  local src
  src="$(cd /tmp && go mod download -json "gvisor.dev/gvisor@$v" | awk -F'"' '/"Dir"/ {print $4}')"
  [[ -d "$src" ]] || die "cannot download gvisor.dev/gvisor@$v from the Go module proxy"
  write_wrapper "$moddir" gvisor.dev/gvisor "$v" "	gvisor.dev/gvisor => ./gvisor-src"
  # A fresh copy each time: the module cache is read-only and must stay pristine.
  rm -rf "$moddir/gvisor-src"
  cp -r "$src" "$moddir/gvisor-src"
  chmod -R u+w "$moddir/gvisor-src"
  patch -s -p1 -d "$moddir/gvisor-src" <"$patchfile" || die "cannot apply $patchfile to gvisor $v"
  go_build "gvisor-$v" "$moddir" "$out" -ldflags "-s -w -X gvisor.dev/gvisor/runsc/version.version=$v" \
    gvisor.dev/gvisor/runsc gvisor.dev/gvisor/shim
  mv "$out/shim" "$out/$GVISOR_SHIM"
}

main() {
  command -v go >/dev/null || die "go is required to build the cluster binaries"
  mkdir -p "$BUILD_DIR" "$CODEEXEC_CACHE/bin"
  local what=("$@")
  [[ ${#what[@]} -gt 0 ]] || what=(kubernetes etcd kube_router crictl gvisor)
  local w
  for w in "${what[@]}"; do "build_${w//-/_}"; done
}

main "$@"
