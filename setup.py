"""Builds the Cython extensions in cext/ against Debian's ISA-L (libisal-dev)."""

import shutil
import subprocess
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

ISAL_MIN = (2, 30)


def isal_flags():
    """Find ISA-L with pkg-config; fail with 'found X, need Y' rather than a compiler error."""
    if not shutil.which("pkg-config"):
        sys.exit("setup.py: pkg-config not found: apt-get install -y pkg-config libisal-dev")
    try:
        version = subprocess.check_output(["pkg-config", "--modversion", "libisal"], text=True).strip()
    except subprocess.CalledProcessError:
        sys.exit("setup.py: ISA-L not found: apt-get install -y libisal-dev")
    found = tuple(int(p) for p in version.split(".")[:2])
    if found < ISAL_MIN:
        sys.exit(f"setup.py: ISA-L found {version}, need >= {'.'.join(map(str, ISAL_MIN))}")
    cflags = subprocess.check_output(["pkg-config", "--cflags", "libisal"], text=True).split()
    libs = subprocess.check_output(["pkg-config", "--libs", "libisal"], text=True).split()
    return cflags, libs


cflags, libs = isal_flags()
extensions = [
    Extension(
        "mooseng._chunkio",
        ["cext/chunkio.pyx"],
        extra_compile_args=cflags + ["-O2", "-Wall", "-Wno-unused-function"],
        extra_link_args=libs,
    ),
    Extension(
        "mooseng._ec",
        ["cext/ec.pyx"],
        extra_compile_args=cflags + ["-O2", "-Wall", "-Wno-unused-function"],
        extra_link_args=libs,
    ),
]

setup(ext_modules=cythonize(extensions, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False}))
