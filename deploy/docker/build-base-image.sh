#!/usr/bin/env bash
# Build a small local Debian bookworm base image with Python 3, from Debian
# packages only (no registry needed): debootstrap a minbase rootfs, trim it,
# then `docker import` it. Idempotent: does nothing when the tag already exists
# with the current BASE_REVISION (bump it when PACKAGES or the trimming change).
#
# The image serves as the build stage of the Dockerfile (binutils strips the
# wheels' shared objects, pip comes from Debian's wheel) and as the start of the
# runtime image, which the Dockerfile slims (deploy/docker/slim-rootfs.sh). nginx
# is there for the mesh's gateway container, which runs this same image.
#
# Usage: build-base-image.sh [TAG]      (default: dataproduct-base:bookworm)
# Env:   BASE_IMAGE (tag, if no argument), DEBIAN_SUITE (bookworm),
#        DEBIAN_MIRROR (http://deb.debian.org/debian), REBUILD=1 to force.
set -euo pipefail

log() { printf 'build-base-image: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TAG="${1:-${BASE_IMAGE:-dataproduct-base:bookworm}}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,ca-certificates,tini,nginx,binutils"
BASE_REVISION=2
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap needs it)"

# The engine must be up before anything else.
"$HERE/ensure-dockerd.sh"

# One build at a time; re-check under the lock.
exec 9>/tmp/dataproduct-base-image.lock
flock -w 1800 9 || die "timed out waiting for another base image build"

revision="$(docker image inspect --format '{{index .Config.Labels "dataproduct.base-revision"}}' \
    "$TAG" 2>/dev/null || true)"
if [ "${REBUILD:-0}" != 1 ] && [ "$revision" = "$BASE_REVISION" ]; then
    log "image $TAG (revision $BASE_REVISION) already exists; nothing to do (REBUILD=1 to force)"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update || log "warning: apt-get update reported errors; trying the install anyway"
    apt-get install -y --no-install-recommends debootstrap
fi

WORK="$(mktemp -d /var/tmp/dataproduct-rootfs.XXXXXX)"
ROOTFS="$WORK/rootfs"

# Unmount anything debootstrap left mounted (deepest first), then delete,
# never crossing into another file system.
cleanup() {
    local m
    awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r \
        | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

start=$(date +%s)
log "debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 40 "$WORK/debootstrap.log" >&2
    die "debootstrap failed"
}

# Keep later apt installs in derived images small, and never start services.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-dataproduct-nodoc" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$ROOTFS/etc/apt/apt.conf.d/01-dataproduct-norecommends"
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"

# Trim: apt lists and caches, docs (keep copyright), man/info pages, locales,
# logs, device nodes (the engine provides /dev).
rm -rf "${ROOTFS:?}"/var/lib/apt/lists/* "${ROOTFS:?}"/var/cache/apt/* \
    "${ROOTFS:?}"/var/cache/debconf/*-old "${ROOTFS:?}"/var/lib/dpkg/*-old \
    "${ROOTFS:?}"/usr/share/man/* "${ROOTFS:?}"/usr/share/info/* \
    "${ROOTFS:?}"/usr/share/locale/* "${ROOTFS:?}"/usr/share/lintian/* \
    "${ROOTFS:?}"/var/log/* "${ROOTFS:?}"/tmp/* "${ROOTFS:?}"/var/tmp/* "${ROOTFS:?}"/dev/*
find "$ROOTFS/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
: >"$ROOTFS/etc/machine-id"

log "importing rootfs as $TAG"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase with python3 (debootstrap)\"" \
    --change "LABEL dataproduct.base-revision=$BASE_REVISION" \
    --change 'CMD ["/bin/bash"]' \
    - "$TAG" >/dev/null

size=$(docker image inspect --format '{{.Size}}' "$TAG")
log "built $TAG in $(( $(date +%s) - start ))s, size $(( size / 1000000 )) MB"
