#!/bin/sh
# ensure-packages PKG...: install the Debian packages an image needs that its base lacks.
# With the project's base (docker/build-base.sh) everything is already there and nothing is
# fetched, so builds work offline; with a public base such as debian:bookworm, apt-get gets them.
set -eu
missing=""
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
echo "ensure-packages: installing$missing" >&2
apt-get update -q || {
    echo "ensure-packages: cannot reach a Debian mirror to install$missing; build the base image first: docker/build-base.sh" >&2
    exit 1
}
# shellcheck disable=SC2086 # one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
rm -rf /var/lib/apt/lists/*
