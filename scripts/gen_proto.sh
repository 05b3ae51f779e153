#!/usr/bin/env bash
# Regenerates daemons/mooseng/proto/mooseng_pb2*.py from mooseng.proto (needs grpcio-tools).
set -euo pipefail
cd "$(dirname "$0")/../daemons"
"${PYTHON:-python3}" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. mooseng/proto/mooseng.proto
