#!/usr/bin/env bash
# Builds the wheelhouse the Docker images install from (docker/wheels/): MooseNG itself, with its
# Cython extensions compiled here, and every runtime dependency. Image builds have no network, so
# everything they install must be in this directory.
#
#   scripts/build-wheels.sh [DIR]      DIR defaults to docker/wheels
#
# Python: $MOOSENG_PYTHON or .venv/bin/python (scripts/install.sh makes it; it has Cython and
# the ISA-L/FUSE headers are installed). The MooseNG wheel is rebuilt only when its sources
# change; dependencies come from the wheelhouse when it already satisfies them, from PyPI otherwise.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR=${1:-$REPO_DIR/docker/wheels}
PYTHON=${MOOSENG_PYTHON:-$REPO_DIR/.venv/bin/python}

die() {
    printf 'build-wheels.sh: %s\n' "$*" >&2
    exit 1
}

[ -x "$PYTHON" ] || die "no Python at $PYTHON: run scripts/install.sh first (or set MOOSENG_PYTHON)"
"$PYTHON" -c 'import Cython, setuptools, wheel' 2>/dev/null ||
    die "$PYTHON lacks Cython/setuptools/wheel: run scripts/install.sh first"
mkdir -p "$DIR"
cd "$REPO_DIR"

# The build inputs of the MooseNG wheel: package sources, extensions, build files.
sources=$(find daemons cext -type f \( -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' \) -print0 |
    sort -z | xargs -0 sha256sum | cat - pyproject.toml setup.py | sha256sum | cut -c1-16)
stamp="$DIR/.mooseng-sources"
if [ "$(cat "$stamp" 2>/dev/null)" != "$sources" ] || ! ls "$DIR"/mooseng-*.whl >/dev/null 2>&1; then
    rm -f "$DIR"/mooseng-*.whl "$stamp"
    build=$(mktemp -d /var/tmp/mooseng-wheel.XXXXXX)
    trap 'rm -rf "$build"' EXIT
    # Build from a copy: an in-tree build would leave build/ and compiled files in the checkout.
    tar -c --exclude='*.so' --exclude=__pycache__ daemons cext pyproject.toml setup.py README.md | tar -C "$build" -x
    echo "build-wheels.sh: building the mooseng wheel"
    "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" "$build" ||
        die "building the mooseng wheel failed (see pip's output above)"
    echo "$sources" >"$stamp"
fi

wheel=$(ls "$DIR"/mooseng-*.whl)
if ! "$PYTHON" -m pip wheel -q --no-index --find-links "$DIR" -w "$DIR" "$wheel" 2>/dev/null; then
    echo "build-wheels.sh: fetching dependency wheels from PyPI"
    "$PYTHON" -m pip wheel -q --find-links "$DIR" -w "$DIR" "$wheel" ||
        die "fetching or building the dependency wheels failed (is PyPI reachable? see pip's output above)"
fi
echo "build-wheels.sh: $(find "$DIR" -name '*.whl' | wc -l) wheels in $DIR"
