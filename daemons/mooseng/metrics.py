"""Prometheus exposition shared by every daemon; each daemon defines its own metrics beside its code."""

from prometheus_client import Histogram, start_http_server

from mooseng.wire import parse_addr

# Buckets from 50 us (a cached metadata op) to 10 s (a chunk write under load).
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def latency_histogram(name: str, doc: str, labels=("op",)) -> Histogram:
    return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS)


def serve(addr: str):
    """Serve /metrics on host:port in a daemon thread; returns the server so tests can stop it."""
    host, port = parse_addr(addr)
    server, thread = start_http_server(port, addr=host)
    return server
