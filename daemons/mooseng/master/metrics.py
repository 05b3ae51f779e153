"""Master metrics: per-op counters and latency recorded as ops run; gauges computed at scrape time.

Gauges come from one `Gauges` snapshot the service builds when Prometheus scrapes, so nothing has
to be kept up to date on the hot path.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mooseng.metrics import OpStats


@dataclass
class Gauges:
    leader: bool
    log_index: int
    chunks_total: int
    chunk_states: dict[str, int]  # stable / undergoal / missing
    chunkservers: dict[str, int]  # alive / down
    bytes_read: int
    bytes_written: int
    # (server label, disk label, kind, bytes), kind in total / used / free
    disk_bytes: list[tuple[str, str, str, int]] = field(default_factory=list)


class MasterMetrics:
    """Create once per process: the metrics go into the default registry that metrics.serve exposes."""

    def __init__(self):
        self._ops = OpStats("mooseng_operation_duration_seconds", "Time to serve a Meta operation",
                            "mooseng_client_operations_total", "Meta operations served, by op (failures included)")

    def watch(self, gauges: Callable[[], Gauges]) -> None:
        """Expose the gauges `gauges()` returns, computed at every scrape."""
        REGISTRY.register(_GaugeCollector(gauges))

    def observe(self, op: str, seconds: float) -> None:
        self._ops.observe(op, seconds)


class _GaugeCollector:
    def __init__(self, gauges: Callable[[], Gauges]):
        self._gauges = gauges

    def describe(self):
        return []  # computed at scrape time; nothing to check at registration

    def collect(self):
        g = self._gauges()
        yield GaugeMetricFamily("mooseng_raft_leader", "1 if this master is the leader", value=int(g.leader))
        yield GaugeMetricFamily(
            "mooseng_metadata_log_index", "Index of the last applied changelog entry", value=g.log_index
        )
        yield GaugeMetricFamily("mooseng_chunks_total", "Chunks in the namespace", value=g.chunks_total)
        states = GaugeMetricFamily("mooseng_chunks", "Chunks by replication state", labels=["state"])
        for state, n in g.chunk_states.items():
            states.add_metric([state], n)
        yield states
        servers = GaugeMetricFamily("mooseng_chunkservers", "Registered chunkservers by state", labels=["state"])
        for state, n in g.chunkservers.items():
            servers.add_metric([state], n)
        yield servers
        yield CounterMetricFamily(
            "mooseng_bytes_read", "Bytes read from chunkservers (heartbeat counters)", value=g.bytes_read
        )
        yield CounterMetricFamily(
            "mooseng_bytes_written", "Bytes written to chunkservers (heartbeat counters)", value=g.bytes_written
        )
        disks = GaugeMetricFamily("mooseng_disk_bytes", "Chunkserver disk space", labels=["server", "disk", "kind"])
        for server, disk, kind, n in g.disk_bytes:
            disks.add_metric([server, disk, kind], n)
        yield disks
