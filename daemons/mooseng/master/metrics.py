"""Master metrics: per-op counters and latency recorded as ops run; gauges read at scrape time.

Gauges come from one `Gauges` snapshot the service builds when Prometheus scrapes: the chunk-state
counts the registry keeps up to date as chunks change (so a scrape costs the same at any number
of chunks), and the registry's few servers and disks as they are now.
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
    chunk_states: dict[str, dict[str, int]]  # class -> state -> chunks (registry.STATES)
    chunkservers: dict[str, int]  # up / down
    bytes_read: int
    bytes_written: int
    # (server label, disk label, kind, bytes), kind in total / used / free
    disk_bytes: list[tuple[str, str, str, int]] = field(default_factory=list)
    raft: dict = field(default_factory=dict)  # RaftNode.status(); empty without raft
    disks: dict[str, int] = field(default_factory=dict)  # ok / damaged, over the live chunkservers
    replication: dict[str, int] = field(default_factory=dict)  # chunks, bytes, failures (counters)


class MasterMetrics:
    """Create once per process: the metrics go into the default registry that metrics.serve exposes."""

    def __init__(self):
        self._ops = OpStats("mooseng_operation_duration_seconds", "Time to serve a Meta operation",
                            "mooseng_client_operations_total", "Meta operations served, by op (failures included)")

    def watch(self, gauges: Callable[[], Gauges]) -> None:
        """Expose the gauges `gauges()` returns, computed at every scrape."""
        REGISTRY.register(_GaugeCollector(gauges))

    def observe(self, op: str, seconds: float, error: str = "") -> None:
        self._ops.observe(op, seconds, error)


_RAFT_GAUGES = [
    ("term", "mooseng_raft_term", "Current Raft term"),
    ("commit", "mooseng_raft_commit_index", "Highest log index known to be committed"),
    ("applied", "mooseng_raft_applied_index", "Highest log index applied to the namespace"),
    ("log_entries", "mooseng_raft_log_entries", "Entries in the Raft log after the snapshot"),
    ("snapshot_index", "mooseng_raft_snapshot_index", "Log index of the newest snapshot"),
    ("snapshot_time", "mooseng_raft_last_snapshot_timestamp_seconds", "Wall clock of the newest snapshot (0: none)"),
]
_RAFT_COUNTERS = [
    ("elections", "mooseng_raft_elections", "Elections this master started (as candidate)"),
    ("leader_changes", "mooseng_raft_leader_changes", "Times this master saw a new leader"),
]


class _GaugeCollector:
    def __init__(self, gauges: Callable[[], Gauges]):
        self._gauges = gauges

    def describe(self):
        return []  # computed at scrape time; nothing to check at registration

    def collect(self):
        g = self._gauges()
        yield GaugeMetricFamily("mooseng_raft_leader", "1 if this master is the leader", value=int(g.leader))
        raft = g.raft
        if raft:
            for key, name, what in _RAFT_GAUGES:
                yield GaugeMetricFamily(name, what, value=raft[key] or 0)
            for key, name, what in _RAFT_COUNTERS:
                yield CounterMetricFamily(name, what, value=raft[key])
        yield GaugeMetricFamily(
            "mooseng_metadata_log_index", "Index of the last applied Raft log entry", value=g.log_index
        )
        yield GaugeMetricFamily("mooseng_chunks_total", "Chunks in the namespace", value=g.chunks_total)
        states = GaugeMetricFamily("mooseng_chunks", "Chunks by storage class and replication state",
                                   labels=["sclass", "state"])
        for sclass, counts in sorted(g.chunk_states.items()):
            for state, n in counts.items():
                states.add_metric([sclass, state], n)
        yield states
        disk_states = GaugeMetricFamily("mooseng_disks", "Data dirs of the live chunkservers by state", labels=["state"])
        for state, n in g.disks.items():
            disk_states.add_metric([state], n)
        yield disk_states
        for name, key, what in (("mooseng_replication_chunks", "chunks", "Chunk copies made by replication"),
                                ("mooseng_replication_bytes", "bytes", "Bytes copied by replication"),
                                ("mooseng_replication_failures", "failures", "Replications that failed or timed out")):
            yield CounterMetricFamily(name, what, value=g.replication.get(key, 0))
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
