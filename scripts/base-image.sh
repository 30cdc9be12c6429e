#!/usr/bin/env bash
# Build heldout's base images from Debian packages: no registry can be pulled from here.
#   heldout/base:bookworm    python3 only (algorithm and evaluation images start from it)
#   heldout/python:bookworm  python3 + pip + venv (images that pip-install wheels at build time)
# Idempotent: an image that exists is kept. MIRROR overrides the Debian mirror.
set -euo pipefail
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE=${HELDOUT_BASE_CACHE:-/var/cache/heldout/rootfs}

build() {
  local name=$1 include=$2
  if docker image inspect "$name" >/dev/null 2>&1; then
    echo "base image $name: present"
    return
  fi
  local dir="$CACHE/${name//[:\/]/_}"
  rm -rf "$dir"
  mkdir -p "$dir"
  echo "base image $name: debootstrap ($include)"
  debootstrap --variant=minbase --include="$include" bookworm "$dir" "$MIRROR" >/dev/null
  # Trim caches so the image stays small.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' - "$name" >/dev/null
  rm -rf "$dir"
  echo "base image $name: built"
}

build heldout/base:bookworm python3,ca-certificates
build heldout/python:bookworm python3,python3-pip,python3-venv,ca-certificates
