#!/usr/bin/env bash
# Builds a Debian 12 base image from Debian packages with debootstrap and imports it into the
# engine at $DOCKER_HOST: no registry is reachable on our machines, so nothing can be pulled.
# Users elsewhere can skip this and pass a public image as the Dockerfiles' BASE_IMAGE build arg.
#
#   docker/build-base.sh [IMAGE] [PACKAGE...]
#
# IMAGE defaults to mooseng-base:bookworm; PACKAGEs are added to the default set below. The image
# is labelled with a hash of its package list and rebuilt only when that list changes.
set -euo pipefail

IMAGE=${1:-mooseng-base:bookworm}
[ $# -gt 0 ] && shift
# What every MooseNG image and every Molecule host needs: Python for the daemons and Ansible,
# the shared libraries our wheels link (ISA-L, libfuse 2), fusermount, and tools for healthchecks.
PACKAGES=(python3 python3-venv python3-pip libisal2 libfuse2 fuse3 procps iproute2 curl ca-certificates "$@")
MIRROR=${MOOSENG_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

die() {
    printf 'build-base.sh: %s\n' "$*" >&2
    exit 1
}

command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install -y debootstrap"
docker info >/dev/null 2>&1 || die "no Docker engine at DOCKER_HOST=${DOCKER_HOST:-unset} (start one: scripts/docker-engine.sh start NAME)"

include=$(printf '%s\n' "${PACKAGES[@]}" | sort -u | paste -sd, -)
want=$(printf '%s' "$include" | sha256sum | cut -c1-16)
have=$(docker image inspect -f '{{ index .Config.Labels "org.mooseng.packages" }}' "$IMAGE" 2>/dev/null || true)
if [ "$have" = "$want" ]; then
    echo "build-base.sh: $IMAGE is up to date"
    exit 0
fi

rootfs=$(mktemp -d /var/tmp/mooseng-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "build-base.sh: debootstrap bookworm ($include) from $MIRROR"
debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 ||
    { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
rm -f "$rootfs.log"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import \
    --change "LABEL org.mooseng.packages=$want" \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "build-base.sh: built $IMAGE"
