"""Prometheus exposition shared by every daemon; each daemon defines its own metrics beside its code."""

import threading
from bisect import bisect_left

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from mooseng.wire import parse_addr

# Buckets from 50 us (a cached metadata op) to 10 s (a chunk write under load).
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


ERRORS_NAME = "mooseng_operation_errors_total"


class OpStats:
    """Per-op count and latency histogram on the hot path of every request, exposed as the
    counter `count_name` (optional) and the histogram `duration_name`, both labelled `op`, and
    the failures as `mooseng_operation_errors_total{op, error}` (an errno or status name), so an
    operator sees EIO or ENOSPC rise, not only the request rate.

    About 1 us per observation: a labelled prometheus_client Counter plus Histogram cost 5 to 10 us
    (a lock per value, a linear scan of the buckets), which a metadata op served in 50 us feels.
    """

    def __init__(self, duration_name: str, duration_doc: str, count_name: str = "", count_doc: str = "",
                 registry=REGISTRY, buckets=LATENCY_BUCKETS):
        self._names = (duration_name, duration_doc, count_name, count_doc)
        self._bounds = tuple(buckets)
        self._lock = threading.Lock()
        self._ops: dict[str, list] = {}  # op -> [count, sum, count per bucket..., count above the last]
        self._errors: dict[tuple[str, str], int] = {}  # (op, error) -> failures
        registry.register(self)

    def observe(self, op: str, seconds: float, error: str = "") -> None:
        """Count one request of `op` that took `seconds`; `error` names how it failed, if it did."""
        i = bisect_left(self._bounds, seconds)  # the first bucket whose bound is >= seconds
        with self._lock:
            if error:
                self._errors[op, error] = self._errors.get((op, error), 0) + 1
            rec = self._ops.get(op)
            if rec is None:
                rec = self._ops[op] = [0, 0.0] + [0] * (len(self._bounds) + 1)
            rec[0] += 1
            rec[1] += seconds
            rec[2 + i] += 1

    def describe(self):
        return []  # samples appear as ops are seen

    def collect(self):
        duration_name, duration_doc, count_name, count_doc = self._names
        with self._lock:
            ops = {op: list(rec) for op, rec in self._ops.items()}
            errors = sorted(self._errors.items())
        histogram = HistogramMetricFamily(duration_name, duration_doc, labels=["op"])
        counter = CounterMetricFamily(count_name, count_doc, labels=["op"]) if count_name else None
        for op, (count, total, *per_bucket) in sorted(ops.items()):
            buckets, running = [], 0
            for bound, n in zip(self._bounds, per_bucket):
                running += n
                buckets.append((floatToGoString(bound), running))
            buckets.append(("+Inf", count))
            histogram.add_metric([op], buckets, total)
            if counter is not None:
                counter.add_metric([op], count)
        if counter is not None:
            yield counter
        yield histogram
        if errors:  # the series appear with the first failure, as the ops do with their first request
            failures = CounterMetricFamily(ERRORS_NAME, "Requests that failed, by op and errno or status name",
                                           labels=["op", "error"])
            for (op, error), n in errors:
                failures.add_metric([op, error], n)
            yield failures


def serve(addr: str):
    """Serve /metrics on host:port in a daemon thread; returns the server so tests can stop it."""
    host, port = parse_addr(addr)
    server, thread = start_http_server(port, addr=host)
    return server
