#!/usr/bin/env bash
# Build the local stand-in bases (see docs/images.md) unless they are already present:
#   ROOTFS_IMAGE  Debian bookworm minbase from debootstrap, imported as an image
#   PYTHON_IMAGE  ROOTFS_IMAGE + Debian's Python 3.11  (stand-in for python:3.11-slim-bookworm)
#   RAY_IMAGE     PYTHON_IMAGE + Ray's user and venv    (stand-in for rayproject/ray:<v>-py311-gpu)
# Usage: base-image.sh ENGINE ROOTFS_IMAGE PYTHON_IMAGE RAY_IMAGE
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 ENGINE ROOTFS_IMAGE PYTHON_IMAGE RAY_IMAGE" >&2
  exit 2
fi
engine=$1 rootfs_image=$2 python_image=$3 ray_image=$4
here=$(cd "$(dirname "$0")" && pwd)
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

present() { "$engine" image inspect "$1" >/dev/null 2>&1; }

if present "$rootfs_image"; then
  echo "base-image: $rootfs_image present"
else
  command -v debootstrap >/dev/null || { echo "base-image: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }
  dir=$(mktemp -d "${TMPDIR:-/tmp}/polypythia-rootfs.XXXXXX")
  trap 'rm -rf "$dir"' EXIT
  echo "base-image: debootstrap --variant=minbase $suite (a few minutes)"
  debootstrap --variant=minbase "$suite" "$dir" "$mirror" >"$dir.log" 2>&1 \
    || { tail -n 20 "$dir.log" >&2; echo "base-image: debootstrap failed (log: $dir.log)" >&2; exit 1; }
  rm -f "$dir.log"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | "$engine" import --change 'CMD ["/bin/bash"]' - "$rootfs_image"
fi

# The network of the build: the host's, so apt and pip reach their mirrors as the host does.
if present "$python_image"; then
  echo "base-image: $python_image present"
else
  "$engine" build --network host -f "$here/python-standin.Dockerfile" \
    --build-arg ROOTFS_IMAGE="$rootfs_image" -t "$python_image" "$here"
fi

if present "$ray_image"; then
  echo "base-image: $ray_image present"
else
  "$engine" build -f "$here/ray-standin.Dockerfile" \
    --build-arg PYTHON_IMAGE="$python_image" -t "$ray_image" "$here"
fi
