"""Client metrics, in a registry of their own: the master and chunkserver define metrics with the
same names in the default registry, and tests run several daemons' code in one process."""

from prometheus_client import CollectorRegistry, Counter, start_http_server

from mooseng.metrics import OpStats
from mooseng.wire import parse_addr

REGISTRY = CollectorRegistry()

# mooseng_client_operations_total{op} and mooseng_operation_duration_seconds{op}
OPERATIONS = OpStats("mooseng_operation_duration_seconds", "Time to complete a file-system operation",
                     "mooseng_client_operations_total", "File-system operations by op (failures included)",
                     registry=REGISTRY)
BYTES_WRITTEN = Counter("mooseng_bytes_written_total", "Bytes written by applications", registry=REGISTRY)
BYTES_READ = Counter("mooseng_bytes_read_total", "Bytes read by applications", registry=REGISTRY)


def serve(addr: str):
    """Serve /metrics on host:port in a daemon thread; returns the server."""
    host, port = parse_addr(addr)
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server
