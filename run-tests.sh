#!/usr/bin/env bash
# Sets up everything (scripts/install.sh), then runs the whole test suite: unit, integration
# (real daemons on 127.0.0.1) and end-to-end (real FUSE mounts). Extra arguments go to pytest,
# e.g. ./run-tests.sh tests/unit  or  ./run-tests.sh -m slow
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh
exec .venv/bin/python -m pytest -ra "$@"
