"""Chunkserver-to-chunkserver replication: this server pulls a chunk from a source copy.

The master orders replications in heartbeat replies (`replicate: [{chunk_id, version, source}]`);
the `replicate` rpc runs one directly. Either way the copy is pulled with the source's ordinary
`read` calls (which check every block's CRC there) after `crc_table` gave its length and CRC
entries; the data goes to a temporary file whose own CRCs must equal the source's before it is
synced and renamed into place (store.ReplicaWriter). So a source that fails, or sends something
else than it stores, leaves nothing that counts as a copy. The new copy is reported as `added` in
the next heartbeat, the outcome as `replicated: [{chunk_id, version, bytes, error}]`.

Rate: at most `workers` replications at once, and all of them together pull at most `rate`
bytes per second, so that repair does not starve client I/O.
"""

import errno
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mooseng import rpc
from mooseng.chunkserver.store import ChunkStore
from mooseng.errors import FsError

log = logging.getLogger(__name__)

PIECE = 4 << 20  # what a client asks for per read call, too
CALL_TIMEOUT_S = 30.0


class Pacer:
    """A shared byte budget: take(n) returns once sending n bytes keeps the rate at most `rate`."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, sleep=time.sleep):
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def take(self, n: int) -> None:
        with self._lock:
            now = self._clock()
            start = max(self._next, now)
            self._next = start + n / self._rate
        if start > now:
            self._sleep(start - now)


class Replicator:
    def __init__(self, store: ChunkStore, workers: int, rate_bytes_s: float):
        self._store = store
        self.on_done: Callable[[], None] = lambda: None  # after each one: the heartbeat reports it early
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="replicate")
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._results: list[dict] = []
        self._clients = rpc.Clients(timeout_s=CALL_TIMEOUT_S)
        self._stop = threading.Event()
        self.pacer = Pacer(rate_bytes_s, sleep=self._stop.wait)  # shared with the builder

    def submit(self, orders: list[dict]) -> None:
        """Run the master's orders in the background; outcomes go to take_results()."""
        for order in orders:
            self._pool.submit(self._run, order["chunk_id"], order["version"], order["source"])

    def take_results(self) -> list[dict]:
        with self._lock:
            results, self._results = self._results, []
        return results

    def _run(self, chunk_id: int, version: int, source: str) -> None:
        try:
            n, error = self.replicate(chunk_id, version, source), ""
        except (FsError, rpc.RpcError) as exc:
            n, error = 0, str(exc)
            log.warning("replication of chunk %016X version %d from %s failed: %s", chunk_id, version, source, exc)
        except Exception as exc:  # a bug: report it as a failure, keep the worker
            log.exception("replication of chunk %016X failed unexpectedly", chunk_id)
            n, error = 0, f"internal error: {exc}"
        with self._lock:
            self._results.append({"chunk_id": chunk_id, "version": version, "bytes": n, "error": error})
        self.on_done()

    def replicate(self, chunk_id: int, version: int, source: str) -> int:
        """Pull the copy; returns its data bytes. FsError or rpc.RpcError if it did not work."""
        with self._lock:
            if chunk_id in self._running:
                raise FsError(errno.EEXIST, f"chunk {chunk_id:016X} is already being replicated here")
            self._running.add(chunk_id)
        try:
            client = self._clients.get(source)
            info, _ = client.call("crc_table", {"chunk_id": chunk_id, "version": version})
            length, crcs = info["length"], info["crcs"]
            replica = self._store.open_replica(chunk_id, version)
            try:
                for offset in range(0, length, PIECE):
                    if self._stop.is_set():
                        raise FsError(errno.ECANCELED, "the chunkserver is stopping")
                    n = min(PIECE, length - offset)
                    self.pacer.take(n)
                    params = {"chunk_id": chunk_id, "version": version, "offset": offset, "length": n}
                    reply, data = client.call("read", params)
                    if reply.get("length") != n or len(data) != n:
                        raise FsError(errno.EIO, f"short read from {source}: {len(data)} of {n} bytes")
                    replica.write(data)
                replica.finish(length, crcs)
            except BaseException:
                replica.abort()
                raise
        finally:
            with self._lock:
                self._running.discard(chunk_id)
        log.info("replicated chunk %016X version %d (%d bytes) from %s", chunk_id, version, length, source)
        return length

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._clients.close()
