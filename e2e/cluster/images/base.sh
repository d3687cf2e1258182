# The local Debian base image: debootstrap a minimal trixie root filesystem from the host's
# own Debian mirror, trim it like the official "slim" images, and commit it into buildah's
# storage as docker.io/library/debian:trixie-slim, so our Dockerfiles' `FROM
# debian:trixie-slim` resolves locally and never reaches for a registry (we have none).
# Sourced by images.sh, never run. Uses its log, die, on_exit, CACHE_DIR, LOG_DIR, SUITE
# and BASE_IMAGE.
# shellcheck shell=bash

# Bump when the trimming below changes: the cached root filesystem tar is keyed by it.
ROOTFS_REVISION=1

# Prints "URI SUITE" for each enabled `deb` entry of the host's apt sources, in both the
# one-line (sources.list) and the deb822 (*.sources) formats.
host_apt_entries() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    # deb [opt=val ...] URI SUITE COMPONENTS...
    awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                       print $i, $(i + 1) }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    awk 'function flush() { if (types ~ /(^| )deb( |$)/ && enabled != "no")
                              for (u in uris) for (s in suites) print uris[u], suites[s]
                            types = ""; enabled = ""; delete uris; delete suites }
         /^[ \t]*$/      { flush(); next }
         /^#/            { next }
         tolower($1) == "types:"   { types = substr($0, index($0, ":") + 1) }
         tolower($1) == "enabled:" { enabled = tolower($2) }
         tolower($1) == "uris:"    { for (i = 2; i <= NF; i++) uris[i] = $i }
         tolower($1) == "suites:"  { for (i = 2; i <= NF; i++) suites[i] = $i }
         END { flush() }' "$f"
  done
}

# The mirror this machine installs Debian packages from: debootstrap and every `apt-get`
# inside our builds use it too (on our VMs only Debian's archive is reachable, and through
# whatever host the machine is configured with). DEBIAN_MIRROR overrides.
debian_mirror() {
  if [[ -n "${DEBIAN_MIRROR:-}" ]]; then printf '%s\n' "${DEBIAN_MIRROR%/}"; return; fi
  local uri
  uri="$(host_apt_entries | awk '$2 !~ /security/ && $1 ~ /^https?:/ { print $1; exit }')"
  printf '%s\n' "${uri:-http://deb.debian.org/debian}" | sed 's:/*$::'
}

# The security archive, when the host uses one (empty otherwise). DEBIAN_SECURITY_MIRROR
# overrides; set it to "none" to leave security updates out of the base's sources.
debian_security_mirror() {
  if [[ -n "${DEBIAN_SECURITY_MIRROR:-}" ]]; then
    [[ "$DEBIAN_SECURITY_MIRROR" == none ]] || printf '%s\n' "${DEBIAN_SECURITY_MIRROR%/}"
    return
  fi
  host_apt_entries | awk '$2 ~ /security/ && $1 ~ /^https?:/ { sub("/*$", "", $1); print $1; exit }'
}

# The base's apt sources (deb822, like the official image): the same archive as the host.
base_sources() {
  local mirror security
  mirror="$(debian_mirror)"
  security="$(debian_security_mirror)"
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" "$SUITE" "$SUITE"
  if [[ -n "$security" ]]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$security" "$SUITE"
  fi
}

rootfs_tar() { printf '%s/debian-%s-minbase-r%s.tar\n' "$CACHE_DIR" "$SUITE" "$ROOTFS_REVISION"; }

# Unmounts whatever debootstrap may have left mounted (proc, sys) after a failure, then
# removes the directory without crossing into any filesystem still mounted.
remove_rootfs_dir() {
  local dir="$1" m
  [[ -d "$dir" ]] || return 0
  while read -r m; do umount -l "$m" 2>/dev/null || true; done \
    < <(awk -v d="$dir" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
  rm -rf --one-file-system "$dir"
}

# Trims a bootstrapped root filesystem the way the official slim image is made: no docs
# (copyright files stay), man pages, translations, apt lists or caches, logs, device
# nodes, or the host's resolv.conf/hostname (runtimes provide /dev and those files); and
# dpkg/apt settings that keep later `apt-get install`s in our builds just as lean.
trim_rootfs() {
  local r="${1:?rootfs directory}"
  [[ "$r" != / ]] || die "refusing to trim /"
  find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r"/usr/share/{man,info,groff,lintian,linda,locale}/*
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
         "$r"/var/lib/dpkg/*-old "${r:?}"/dev/* "$r"/tmp/* "$r"/var/tmp/* "$r"/run/*
  find "$r/var/log" -type f -delete
  rm -f "$r/etc/resolv.conf" "$r/etc/hostname" "$r/etc/apt/sources.list" \
        "$r/var/cache/ldconfig/aux-cache"
  : >"$r/etc/machine-id"

  cat >"$r/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
# Slim image: packages installed later leave out docs (but keep copyrights), man pages
# and translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
  cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
// No package files or binary caches left in image layers.
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  printf 'Acquire::Languages "none";\n' >"$r/etc/apt/apt.conf.d/docker-no-languages"
  printf 'Acquire::GzipIndexes "true";\n' >"$r/etc/apt/apt.conf.d/docker-gzip-indexes"
  printf 'Apt::AutoRemove::SuggestsImportant "false";\n' >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
  # No daemon starts from a package's postinst inside a build.
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
  chmod 755 "$r/usr/sbin/policy-rc.d"
}

# The trimmed root filesystem as a tar in the cache, made once per suite (and trimming
# revision): debootstrap is the slow part (~30-60 s) and its result is not machine-specific.
ensure_rootfs_tar() {
  local tar mirror work
  tar="$(rootfs_tar)"
  if [[ -s "$tar" && -s "$tar.sha256" ]]; then
    log "rootfs: cached $tar"
    return
  fi
  mirror="$(debian_mirror)"
  work="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
  log "rootfs: debootstrap --variant=minbase $SUITE from $mirror (log: $LOG_DIR/debootstrap.log)"
  # debootstrap prints one line per package; progress without flooding the terminal.
  if ! debootstrap --variant=minbase --components=main "$SUITE" "$work/root" "$mirror" 2>&1 \
      | tee "$LOG_DIR/debootstrap.log" | awk '/^I: (Retrieving|Validating|Unpacking|Configuring|Installing)/ { n++;
          if (n % 25 == 0) { printf "  [debootstrap] %d steps (%s)\n", n, $0; fflush() } }
          /^(E|W):/ { print "  [debootstrap] " $0; fflush() }'; then
    remove_rootfs_dir "$work"
    die "debootstrap failed; see $LOG_DIR/debootstrap.log"
  fi
  trim_rootfs "$work/root"
  tar --numeric-owner --xattrs --acls -C "$work/root" -cf "$work/rootfs.tar" .
  sha256sum "$work/rootfs.tar" | awk '{ print $1 }' >"$tar.sha256.tmp"
  mv "$work/rootfs.tar" "$tar"
  mv "$tar.sha256.tmp" "$tar.sha256"
  remove_rootfs_dir "$work"
  log "rootfs: $(du -h "$tar" | cut -f1) in $tar"
}

# This machine's extra CA certificates. Our VMs reach PyPI and npm through a TLS-
# intercepting egress that these CAs sign; builds that pip/npm install need to trust them.
# A property of our machines, not of the images we ship: it goes into this locally made
# base only (an official debian:trixie-slim has none of it).
host_ca_files() {
  local f
  for f in /usr/local/share/ca-certificates/*.crt; do [[ -f "$f" ]] && printf '%s\n' "$f"; done
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] && printf '%s\n' /etc/ssl/certs/ca-certificates.crt
  return 0
}

# Everything that makes up the base image: the rootfs tar, the apt sources, the CA files
# and this recipe. The image carries it as a label; a match means nothing to do.
base_key() {
  local f
  {
    cat "$(rootfs_tar).sha256"
    base_sources
    sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
    while read -r f; do printf '%s ' "$f"; sha256sum <"$f"; done < <(host_ca_files)
  } | sha256sum | cut -d' ' -f1
}

image_label() {  # image label -> value, empty when the image or the label is missing
  buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

ensure_base_image() {
  local key have ctr f staging
  key="$(base_key)"
  have="$(image_label "$BASE_IMAGE" codeexec.base-key)"
  if [[ "$have" == "$key" ]]; then
    log "base: $BASE_IMAGE is current (key ${key:0:12})"
    return
  fi
  log "base: committing $BASE_IMAGE (key ${key:0:12})"
  staging="$(mktemp -d)"
  on_exit "rm -rf '$staging'"
  base_sources >"$staging/debian.sources"
  ctr="$(buildah from --pull=never scratch)"
  # A failure below must not leave a working container behind.
  on_exit "buildah rm '$ctr' >/dev/null 2>&1 || true"
  buildah add --quiet "$ctr" "$(rootfs_tar)" / >/dev/null
  buildah copy --quiet "$ctr" "$staging/debian.sources" /etc/apt/sources.list.d/debian.sources >/dev/null
  while read -r f; do
    buildah copy --quiet "$ctr" "$f" "$f" >/dev/null
  done < <(host_ca_files)
  buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash \
    --label "codeexec.base-key=$key" \
    --label "codeexec.note=locally bootstrapped Debian $SUITE (minbase) plus this machine's CA certificates; not for shipping" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  log "base: $BASE_IMAGE $(buildah images --noheading --format '{{.ID}} {{.Size}}' "$BASE_IMAGE")"
}
