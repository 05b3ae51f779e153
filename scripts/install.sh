#!/usr/bin/env bash
# Installs everything MooseNG needs on a fresh Debian 12 machine: the Debian packages, a virtual
# environment in .venv and the build of the package with its Cython extensions. Idempotent and
# quick when nothing changed, so every entry point (demo, tests, CI) can call it first.
set -euo pipefail
cd "$(dirname "$0")/.."

# One package per line, grouped by what needs it, so that features add lines without conflicts.
APT_PACKAGES=(
  # build and run
  gcc
  pkg-config
  libisal-dev
  fuse3
  libfuse-dev
  python3-dev
  python3-venv
  # tests and demo tooling
  attr
  psmisc
  iproute2
  procps
  curl
  # Docker images, Compose demo and Molecule (a private engine: scripts/docker-engine.sh)
  docker.io
  docker-compose
  iptables
  debootstrap
  # monitoring: promtool and a real Prometheus for the rule and scrape tests, headless Chromium
  # for the web dashboard's browser test
  prometheus
  chromium
  chromium-driver
)
PYTHON=${PYTHON:-python3}
VENV=${MOOSENG_VENV:-.venv}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: missing Debian packages (${missing[*]}); run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "install.sh: apt-get install ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "install.sh: $PYTHON is $("$PYTHON" -V 2>&1), need Python >= 3.11 (set PYTHON=...)" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# Rebuild only when the build inputs changed.
stamp="$VENV/.mooseng-build"
inputs=$(cat pyproject.toml setup.py cext/*.pyx cext/*.pxd 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$inputs" ] || ! "$VENV/bin/python" -c 'import mooseng._chunkio, mooseng._ec' 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel Cython
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  echo "$inputs" > "$stamp"
fi
echo "install.sh: ready ($VENV)"
