#!/usr/bin/env bash
# Builds the wheelhouse that hosts install MooseNG from: the project's wheel (with its Cython
# extensions) and every dependency, built on the controller because hosts reach no package index.
#
#   build-wheelhouse.sh SOURCE_DIR WHEELHOUSE [PYTHON]
#
# Prints "up to date" when WHEELHOUSE already holds a build of the same sources, "built" after a
# build. The build runs in a copy of the sources so that the tree gets no build/ or egg-info.
# WHEELHOUSE/wheelhouse.tar holds the same wheels in one reproducible file, which is what hosts
# get (one checksum to compare instead of one per wheel).
set -euo pipefail

src=$1
out=$2
python=${3:-python3}

die() {
    printf 'build-wheelhouse.sh: %s\n' "$*" >&2
    exit 1
}

[ -f "$src/pyproject.toml" ] || die "$src is not the MooseNG source tree (no pyproject.toml)"
sources() {
    (cd "$src" && find pyproject.toml setup.py README.md cext daemons -type f \
        \( -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.toml' -o -name '*.md' \) \
        -not -path '*/__pycache__/*' | LC_ALL=C sort)
}
hash=$( (cd "$src" && sources | xargs sha256sum; "$python" -V) | sha256sum | cut -c1-16)
if [ -f "$out/.source-hash" ] && [ "$(cat "$out/.source-hash")" = "$hash" ]; then
    echo "build-wheelhouse.sh: $out is up to date ($hash)"
    exit 0
fi

work=$(mktemp -d /var/tmp/mooseng-wheels.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src" "$work/wheels"
(cd "$src" && sources | tar -cf - -T - | tar -C "$work/src" -xf -) || die "cannot copy the sources from $src"
"$python" -m pip wheel -q --wheel-dir "$work/wheels" "$work/src" >"$work/pip.log" 2>&1 ||
    { tail -n 30 "$work/pip.log" >&2; die "pip wheel failed (is the package index reachable? see above)"; }
(cd "$work/wheels" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf wheelhouse.tar ./*.whl)
echo "$hash" >"$work/wheels/.source-hash"
mkdir -p "$(dirname "$out")"
rm -rf "$out.old"
[ -d "$out" ] && mv "$out" "$out.old"
mv "$work/wheels" "$out"
rm -rf "$out.old"
echo "build-wheelhouse.sh: built $out ($hash)"
