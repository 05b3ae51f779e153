"""OpStats: the per-op counter and latency histogram every daemon records on its request path."""

from prometheus_client import CollectorRegistry, generate_latest

from mooseng.metrics import OpStats


def test_counts_and_cumulative_buckets_in_prometheus_format():
    registry = CollectorRegistry()
    stats = OpStats("x_seconds", "latency", "x_total", "count", registry=registry, buckets=(0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.005, 0.5):
        stats.observe("read", seconds)
    stats.observe("write", 0.02)
    text = generate_latest(registry).decode()
    assert 'x_total{op="read"} 4.0' in text and 'x_total{op="write"} 1.0' in text
    assert 'x_seconds_bucket{le="0.001",op="read"} 2.0' in text  # an observation on a bound is in it
    assert 'x_seconds_bucket{le="0.01",op="read"} 3.0' in text
    assert 'x_seconds_bucket{le="+Inf",op="read"} 4.0' in text
    assert 'x_seconds_count{op="read"} 4.0' in text
    assert 'x_seconds_sum{op="read"} 0.5065' in text
    assert 'x_seconds_bucket{le="0.01",op="write"} 0.0' in text


def test_without_a_counter_only_the_histogram_is_exposed():
    registry = CollectorRegistry()
    OpStats("y_seconds", "latency", registry=registry).observe("commit", 0.1)
    text = generate_latest(registry).decode()
    assert 'y_seconds_count{op="commit"} 1.0' in text and "_total" not in text


def test_failures_are_counted_by_op_and_error_name():
    registry = CollectorRegistry()
    stats = OpStats("z_seconds", "latency", registry=registry)
    stats.observe("lookup", 0.001)
    assert "mooseng_operation_errors_total" not in generate_latest(registry).decode()
    stats.observe("lookup", 0.001, "ENOENT")
    stats.observe("lookup", 0.001, "ENOENT")
    stats.observe("write", 0.001, "ENOSPC")
    text = generate_latest(registry).decode()
    assert 'mooseng_operation_errors_total{error="ENOENT",op="lookup"} 2.0' in text
    assert 'mooseng_operation_errors_total{error="ENOSPC",op="write"} 1.0' in text
    assert 'z_seconds_count{op="lookup"} 3.0' in text  # failures are requests too
