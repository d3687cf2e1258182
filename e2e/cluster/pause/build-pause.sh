#!/usr/bin/env bash
# Builds the local pause (pod sandbox) image as an OCI archive, without a registry or a
# container engine: a static binary, one layer, a config, a manifest and an index written
# by hand. Prints the archive's path. Cached by the hash of pause.c and this script.
#   usage: build-pause.sh IMAGE_NAME   (e.g. registry.k8s.io/pause:3.10)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE="${1:?usage: build-pause.sh IMAGE_NAME}"
CACHE="${CODEEXEC_CACHE:-$HOME/.cache/codeexec}/images"
KEY="$(cat "$HERE/pause.c" "$HERE/build-pause.sh" <(echo "$IMAGE") | sha256sum | cut -c1-16)"
OUT="$CACHE/pause-$KEY.oci.tar"

if [[ -s "$OUT" ]]; then echo "$OUT"; exit 0; fi
command -v gcc >/dev/null || { echo "gcc is needed for the pause image" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/rootfs" "$WORK/oci/blobs/sha256" "$CACHE"

gcc -static -O2 -s -Wall -Wextra -o "$WORK/rootfs/pause" "$HERE/pause.c"

# Stores stdin as a blob and prints its digest (sha256 hex).
put_blob() {
  local tmp="$WORK/blob.tmp" d
  cat >"$tmp"
  d="$(sha256sum "$tmp" | cut -d' ' -f1)"
  mv "$tmp" "$WORK/oci/blobs/sha256/$d"
  echo "$d"
}
size_of() { stat -c %s "$WORK/oci/blobs/sha256/$1"; }

# A reproducible layer: fixed owner, mtime and order.
tar -C "$WORK/rootfs" --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -cf "$WORK/layer.tar" pause
diff_id="$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)"
layer="$(gzip -n -9 <"$WORK/layer.tar" | put_blob)"

config="$(printf '%s' '{"architecture":"amd64","os":"linux",'\
'"config":{"Entrypoint":["/pause"],"User":"65535:65535","WorkingDir":"/"},'\
'"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]},'\
'"history":[{"created_by":"codeexec e2e/cluster/pause/build-pause.sh"}]}' | put_blob)"

manifest="$(printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'\
'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config"'","size":'"$(size_of "$config")"'},'\
'"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$layer"'","size":'"$(size_of "$layer")"'}]}' | put_blob)"

# Both annotations carry the full name, so `ctr images import` keeps it as is.
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'\
'"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest"'",'\
'"size":'"$(size_of "$manifest")"',"platform":{"architecture":"amd64","os":"linux"},'\
'"annotations":{"io.containerd.image.name":"'"$IMAGE"'","org.opencontainers.image.ref.name":"'"$IMAGE"'"}}]}' \
  >"$WORK/oci/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$WORK/oci/oci-layout"

tar -C "$WORK/oci" --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -cf "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
echo "$OUT"
