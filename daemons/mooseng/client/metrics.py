"""Client metrics, in a registry of their own: the master and chunkserver define metrics with the
same names in the default registry, and tests run several daemons' code in one process."""

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from mooseng.metrics import LATENCY_BUCKETS
from mooseng.wire import parse_addr

REGISTRY = CollectorRegistry()

OPERATIONS = Counter("mooseng_client_operations_total", "File-system operations by op (failures included)",
                     ["op"], registry=REGISTRY)
DURATION = Histogram("mooseng_operation_duration_seconds", "Time to complete a file-system operation",
                     ["op"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
BYTES_WRITTEN = Counter("mooseng_bytes_written_total", "Bytes written by applications", registry=REGISTRY)
BYTES_READ = Counter("mooseng_bytes_read_total", "Bytes read by applications", registry=REGISTRY)


def serve(addr: str):
    """Serve /metrics on host:port in a daemon thread; returns the server."""
    host, port = parse_addr(addr)
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server
