"""Chunkserver metrics: op latency recorded as ops run; store counters and disks read at scrape time.

Reading the store's own counters when Prometheus scrapes keeps the data path free of metric
updates, and the heartbeat reports the very same numbers.
"""

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mooseng.chunkserver.scrubber import Scrubber
from mooseng.chunkserver.store import DAMAGED, ChunkStore
from mooseng.metrics import OpStats


class ChunkserverMetrics:
    """Create once per process: the metrics go into the default registry that metrics.serve exposes."""

    def __init__(self, store: ChunkStore, scrubber: Scrubber | None = None):
        self._ops = OpStats(
            "mooseng_operation_duration_seconds", "Time to serve a chunkserver request (a write: one piece; commit: the durable end of a session)"
        )
        REGISTRY.register(_StoreCollector(store, scrubber))

    def observe(self, op: str, seconds: float, error: str = "") -> None:
        self._ops.observe(op, seconds, error)


class _StoreCollector:
    def __init__(self, store: ChunkStore, scrubber: Scrubber | None):
        self._store = store
        self._scrubber = scrubber

    def describe(self):
        return []  # computed at scrape time; nothing to check at registration

    def collect(self):
        store = self._store
        yield GaugeMetricFamily("mooseng_chunks_total", "Chunks stored on this server", value=store.chunk_count())
        yield CounterMetricFamily("mooseng_bytes_read", "Chunk data bytes read", value=store.bytes_read)
        yield CounterMetricFamily("mooseng_bytes_written", "Chunk data bytes written", value=store.bytes_written)
        yield CounterMetricFamily("mooseng_crc_errors", "Blocks that failed their CRC check", value=store.crc_errors)
        scrub = self._scrubber
        yield CounterMetricFamily("mooseng_scrub_bytes", "Bytes checked by the background scrubber",
                                  value=scrub.bytes if scrub else 0)
        yield CounterMetricFamily("mooseng_scrub_errors", "Copies the background scrubber found damaged",
                                  value=scrub.errors if scrub else 0)
        space = GaugeMetricFamily("mooseng_disk_bytes", "Data dir space (free: usable by new chunks)", labels=["disk", "kind"])
        damaged = GaugeMetricFamily("mooseng_disk_damaged", "1 if the data dir is damaged", labels=["disk"])
        for disk in store.disk_stats():
            space.add_metric([disk.path, "total"], disk.total_bytes)
            space.add_metric([disk.path, "used"], disk.used_bytes)
            space.add_metric([disk.path, "free"], disk.free_bytes)
            damaged.add_metric([disk.path], int(disk.state == DAMAGED))
        yield space
        yield damaged
