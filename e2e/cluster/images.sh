#!/usr/bin/env bash
# Builds the project's container images with buildah from our own Dockerfiles, on a Debian
# base bootstrapped locally (our machines have no Docker and no registry), and loads them
# into the cluster's containerd, so the images the tests run are the images we ship.
#
#   bash e2e/cluster/images.sh        # or: make images
#
# Every step is skipped when its inputs did not change (a warm run is a quick no-op):
#   base rootfs   cached tar, keyed by suite           ~/.cache/codeexec/images/*.tar
#   base image    label codeexec.base-key               buildah storage (/var/lib/containers)
#   each image    label codeexec.inputs = hash of its Dockerfile, the context files its
#                 COPY/ADD read, and the base image ID
#   archive       oci-archive per image, reused while the image ID matches
#   import        skipped when containerd already has that image ID (config digest)
#
# Environment:
#   CONTAINERD_ADDRESS   containerd socket to import into (namespace k8s.io). Unset: import
#                        into the local cluster's containerd when it is running, else only build.
#   KIND=1               load into kind (`kind load image-archive`, KIND_CLUSTER_NAME) instead.
#   CODEEXEC_CACHE       cache root (default ~/.cache/codeexec).
#   DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR   override the archive read from /etc/apt/sources*.
#   IMAGES_FORCE=1       rebuild the project images (not the base) and re-import them.
#   IMAGES_ONLY="operator python-sandbox"   build/load only these (short names).
#
# The pause (sandbox) image is not built here: e2e/cluster/pause/build-pause.sh makes it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CODEEXEC_CACHE="${CODEEXEC_CACHE:-$HOME/.cache/codeexec}"
CACHE_DIR="$CODEEXEC_CACHE/images"
LOG_DIR="$CACHE_DIR/logs"
ARCHIVE_DIR="$CACHE_DIR/archives"
SUITE=trixie
BASE_IMAGE=docker.io/library/debian:trixie-slim
TAG="${IMAGE_TAG:-dev}"
K8S_NAMESPACE=k8s.io

# The project's images: name | Dockerfile | build context, paths relative to the repo.
IMAGES=(
  "codeexec.local/python-sandbox:$TAG|images/python/Dockerfile|images"
  "codeexec.local/nodejs-sandbox:$TAG|images/nodejs/Dockerfile|images"
  "codeexec.local/operator:$TAG|images/operator/Dockerfile|."
)

# ---------------------------------------------------------------------------------------
# Plumbing: logging, timing, cleanup.

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

CLEANUP=()
on_exit() { CLEANUP+=("$1"); }
run_cleanup() {
  local i
  for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[i]}" || true; done
}
trap run_cleanup EXIT

STEP_TIMES=()
# Runs one step and records its wall time for the summary.
timed() {
  local label="$1"; shift
  local t0="$EPOCHREALTIME" secs
  "$@"
  secs="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
  STEP_TIMES+=("$label|$secs")
  log "step '$label' took ${secs} s"
}

short_name() { local n="${1##*/}"; printf '%s\n' "${n%%:*}"; }  # codeexec.local/x:dev -> x

wanted() {  # is this short name selected by IMAGES_ONLY (default: all)?
  [[ -z "${IMAGES_ONLY:-}" ]] && return 0
  [[ " $IMAGES_ONLY " == *" $1 "* ]]
}

# ---------------------------------------------------------------------------------------
# Tools. A fresh machine has none of them; Debian's archive has all.

APT_UPDATED=0
apt_install() {
  [[ "$APT_UPDATED" == 1 ]] || {
    log "apt-get update"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    APT_UPDATED=1
  }
  log "apt-get install $*"
  # The lock timeout: the cluster scripts may be installing packages at the same time.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "$@" >"$LOG_DIR/apt.log" 2>&1 || {
    tail -20 "$LOG_DIR/apt.log" >&2
    die "apt-get install $* failed; see $LOG_DIR/apt.log"
  }
}

ensure_tools() {
  local need=()
  command -v buildah >/dev/null || need+=(buildah)
  # Recommended by Debian's buildah (left out by --no-install-recommends); chroot isolation
  # does not run it, but buildah's defaults look for an OCI runtime.
  command -v runc >/dev/null || need+=(runc)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v python3 >/dev/null || need+=(python3)
  command -v flock >/dev/null || need+=(util-linux)
  [[ "$TARGET" != containerd ]] || command -v ctr >/dev/null || need+=(containerd)
  if ((${#need[@]})); then apt_install "${need[@]}"; fi
  if [[ "$TARGET" == kind ]]; then
    command -v kind >/dev/null || die "KIND=1 needs the kind binary on PATH"
  fi
}

# ---------------------------------------------------------------------------------------
# Where the images go: containerd (our cluster), kind, or nowhere (build only).

# The local cluster's containerd socket, as the cluster scripts define it (lib.sh); read
# in a subshell so that nothing else of lib.sh (PATH, KUBECONFIG ...) leaks in here.
CLUSTER_SOCKET="$REPO/.cluster/containerd/state/containerd.sock"
read_cluster_socket() {
  local lib="$REPO/e2e/cluster/lib.sh" sock
  [[ -f "$lib" ]] || return 0
  # shellcheck disable=SC2016  # expanded by the inner bash, on purpose
  sock="$(env -u CONTAINERD_ADDRESS bash -c \
      'source "$1" >/dev/null 2>&1; printf "%s" "${CONTAINERD_ADDRESS:-}"' _ "$lib")" || return 0
  [[ -z "$sock" ]] || CLUSTER_SOCKET="$sock"
}

ctr_k8s() { ctr -a "$CONTAINERD_ADDRESS" -n "$K8S_NAMESPACE" "$@"; }

TARGET=none
choose_target() {
  if [[ "${KIND:-0}" == 1 ]]; then
    TARGET=kind
  elif [[ -n "${CONTAINERD_ADDRESS:-}" ]]; then
    TARGET=containerd
    log "importing into containerd at CONTAINERD_ADDRESS=$CONTAINERD_ADDRESS"
  elif [[ -S "$CLUSTER_SOCKET" ]] && command -v ctr >/dev/null \
      && ctr -a "$CLUSTER_SOCKET" version >/dev/null 2>&1; then
    CONTAINERD_ADDRESS="$CLUSTER_SOCKET"
    TARGET=containerd
    log "the local cluster's containerd is running ($CLUSTER_SOCKET): importing there"
  else
    log "no CONTAINERD_ADDRESS and no running local cluster: building only"
  fi
}

check_containerd() {
  [[ "$TARGET" == containerd ]] || return 0
  ctr -a "$CONTAINERD_ADDRESS" version >/dev/null 2>&1 \
    || die "cannot reach containerd at CONTAINERD_ADDRESS=$CONTAINERD_ADDRESS"
}

# ---------------------------------------------------------------------------------------
# Building.

# shellcheck source=images/base.sh
source "$HERE/images/base.sh"

image_id() {  # full image ID in buildah's storage, empty when absent
  buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true
}

# The .dockerignore that buildah gets: ours (caches, build leftovers) plus the context's own.
ignore_file() {
  local ctx="$1" out="$CACHE_DIR/dockerignore.$2"
  cat "$HERE/images/dockerignore" >"$out"
  if [[ -f "$ctx/.dockerignore" ]]; then cat "$ctx/.dockerignore" >>"$out"; fi
  printf '%s\n' "$out"
}

# Builds one image from its Dockerfile unless an image with the same inputs exists.
build_image() {
  local name="$1" dockerfile="$REPO/$2" ctx="$REPO/$3" short ignore key base_id have logf
  short="$(short_name "$name")"
  ignore="$(ignore_file "$ctx" "$short")"
  base_id="$(image_id "$BASE_IMAGE")"
  key="$( { python3 "$HERE/images/inputs.py" "$dockerfile" "$ctx" "$ignore"; echo "$base_id"; } \
          | sha256sum | cut -d' ' -f1)"
  have="$(image_label "$name" codeexec.inputs)"
  if [[ -z "${IMAGES_FORCE:-}" && "$have" == "$key" ]]; then
    log "$short: $name is current (inputs ${key:0:12})"
    return
  fi
  logf="$LOG_DIR/$short.build.log"
  log "$short: building $name from $2, context $3/ (log: $logf)"
  # --isolation chroot: RUN steps use the host network and set up no netavark bridge or
  # iptables chains (which would collide with the cluster's). --pull=never: FROM must
  # resolve to our local base; a registry is never tried. --layers: unchanged leading
  # steps (apt installs) are reused when only later inputs change. --force-rm: a failed
  # build leaves no working containers behind.
  if ! buildah bud --isolation chroot --pull=never --layers --force-rm --format oci \
      --ignorefile "$ignore" --label "codeexec.inputs=$key" \
      -f "$dockerfile" -t "$name" "$ctx" 2>&1 \
      | tee "$logf" | sed -u "s/^/  [$short] /"; then
    FAILED+=("$short")
    log "$short: BUILD FAILED; see $logf"
    return
  fi
  BUILT+=("$short")
}

# ---------------------------------------------------------------------------------------
# Loading into the cluster.

# An OCI archive of the image, with the full name in the reference so containerd imports
# it under that name (with only a tag it would invent one). Reused while the ID matches.
export_archive() {
  local name="$1" id="$2" short archive
  short="$(short_name "$name")"
  archive="$ARCHIVE_DIR/$short.tar"
  # Keyed by ID and name: the archive names its image, and one ID may carry several tags
  # (IMAGE_TAG=x of unchanged inputs is the `dev` image under another name).
  if [[ -s "$archive" && "$(cat "$archive.id" 2>/dev/null)" == "$id $name" ]]; then
    printf '%s\n' "$archive"
    return
  fi
  rm -f "$archive" "$archive.id" "$archive.tmp"
  buildah push --quiet "$name" "oci-archive:$archive.tmp:$name" >/dev/null
  mv "$archive.tmp" "$archive"
  printf '%s %s\n' "$id" "$name" >"$archive.id"
  printf '%s\n' "$archive"
}

# The config digest (= image ID) of an image in containerd, empty when it has none.
containerd_image_id() {
  local digest
  digest="$(ctr_k8s images ls "name==$1" 2>/dev/null | awk 'NR == 2 { print $3 }')"
  [[ -n "$digest" ]] || return 0
  ctr_k8s content get "$digest" 2>/dev/null | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(m.get("config", {}).get("digest", ""))' || true
}

load_image() {
  local name="$1" short id archive
  short="$(short_name "$name")"
  id="$(image_id "$name")"
  case "$TARGET" in
    containerd)
      if [[ -z "${IMAGES_FORCE:-}" && "$(containerd_image_id "$name")" == "sha256:$id" ]]; then
        log "$short: containerd already has $name (${id:0:12})"
        return
      fi
      archive="$(export_archive "$name" "$id")"
      log "$short: importing $name (${id:0:12}) into containerd"
      ctr_k8s images import "$archive" >"$LOG_DIR/$short.import.log" 2>&1 || {
        cat "$LOG_DIR/$short.import.log" >&2
        die "import of $name failed"
      }
      [[ "$(containerd_image_id "$name")" == "sha256:$id" ]] \
        || die "containerd does not show $name as ${id:0:12} after the import"
      IMPORTED+=("$short")
      ;;
    kind)
      archive="$(export_archive "$name" "$id")"
      kind load image-archive "$archive" --name "${KIND_CLUSTER_NAME:-codeexec}"
      IMPORTED+=("$short")
      ;;
  esac
}

summary() {
  local entry name
  log "summary (target: $TARGET${CONTAINERD_ADDRESS:+ at $CONTAINERD_ADDRESS}):"
  for entry in "$BASE_IMAGE|" "${IMAGES[@]}"; do
    name="${entry%%|*}"
    if [[ -n "$(image_id "$name")" ]]; then
      printf '  %-40s %s\n' "$name" \
        "$(buildah images --noheading --format '{{.ID}} {{.Size}}' "$name" | xargs)" >&2
    fi
  done
  for entry in "${STEP_TIMES[@]}"; do printf '  %-34s %6s s\n' "${entry%%|*}" "${entry##*|}" >&2; done
  ((${#BUILT[@]} == 0)) || log "built: ${BUILT[*]}"
  ((${#IMPORTED[@]} == 0)) || log "loaded into $TARGET: ${IMPORTED[*]}"
  ((${#SKIPPED[@]} == 0)) || log "skipped (no Dockerfile yet): ${SKIPPED[*]}"
}

build_all() {
  local entry name dockerfile ctx
  for entry in "${IMAGES[@]}"; do
    name="${entry%%|*}"
    wanted "$(short_name "$name")" || continue
    IFS='|' read -r name dockerfile ctx <<<"$entry"
    if [[ ! -f "$REPO/$dockerfile" ]]; then
      log "$(short_name "$name"): SKIPPED, $dockerfile does not exist (yet)"
      SKIPPED+=("$(short_name "$name")")
      continue
    fi
    timed "build $(short_name "$name")" build_image "$name" "$dockerfile" "$ctx"
  done
}

load_all() {
  local entry name
  [[ "$TARGET" != none ]] || return 0
  for entry in "${IMAGES[@]}"; do
    name="${entry%%|*}"
    wanted "$(short_name "$name")" || continue
    [[ -n "$(image_id "$name")" ]] || continue
    # A failed build leaves the previous image under the name: do not load a stale one.
    [[ " ${FAILED[*]} " != *" $(short_name "$name") "* ]] || continue
    timed "load $(short_name "$name")" load_image "$name"
  done
}

main() {
  [[ "$EUID" == 0 ]] || die "run as root (buildah's rootful storage, debootstrap)"
  BUILT=(); IMPORTED=(); SKIPPED=(); FAILED=()
  local t0="$EPOCHREALTIME"
  mkdir -p "$CACHE_DIR" "$LOG_DIR" "$ARCHIVE_DIR"
  # One run at a time: up.sh and a developer's `make images` may overlap.
  exec 9>"$CACHE_DIR/.lock"
  flock -n 9 || { log "another images.sh is running; waiting for it"; flock 9; }

  read_cluster_socket
  choose_target
  timed "tools" ensure_tools
  check_containerd
  timed "base rootfs (debootstrap $SUITE)" ensure_rootfs_tar
  timed "base image" ensure_base_image
  build_all
  load_all
  summary
  log "done in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
  if ((${#FAILED[@]})); then die "failed to build: ${FAILED[*]} (logs in $LOG_DIR)"; fi
}

main "$@"
