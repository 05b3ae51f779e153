"""Background scrubbing: re-read every chunk at a bounded rate and check every block's CRC.

Reads catch a bad block only where clients read; the scrubber walks every copy, so a copy that
nobody reads is found damaged before it is needed. A damaged copy is marked by the store
(ChunkStore.scrub) and reported in the next heartbeat; the master repairs the chunk from a good
copy and deletes this one. A pass over all chunks is followed by the next; the rate (bytes per
second, `scrub_mb_s`) bounds the disk time it takes from clients. Each chunk is charged its length
plus OPEN_COST: opening and seeking to a chunk takes the disk about as long as reading 1 MiB, so a
store of many small chunks is paced by their count too (charged by length alone, 4 KiB chunks at
8 MB/s were opened ~2,000 times a second, forever, taking half the GIL and the fd cache).
"""

import logging
import threading

from mooseng.chunkserver.replicator import Pacer
from mooseng.chunkserver.store import ChunkStore

log = logging.getLogger(__name__)

PIECE = 1 << 20  # bytes checked per lock of a chunk
OPEN_COST = 1 << 20  # bytes of budget an open and seek are worth, on top of the chunk's length
OPEN_COST = 1 << 20  # bytes of budget an open and seek are worth, on top of the chunk's length
IDLE_S = 5.0  # pause when there is nothing to scrub


class Scrubber:
    def __init__(self, store: ChunkStore, rate_bytes_s: float):
        self._store = store
        self._stop = threading.Event()
        self._pacer = Pacer(rate_bytes_s, sleep=self._stop.wait)
        self._thread = threading.Thread(target=self._run, name="scrubber", daemon=True)
        self.bytes = 0  # checked
        self.errors = 0  # copies found damaged
        self.passes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        buffer = bytearray(PIECE)
        while not self._stop.is_set():
            chunks = sorted(c.chunk_id for c in self._store.chunks() if not c.damaged)
            if not chunks:
                self._stop.wait(IDLE_S)
                continue
            for chunk_id in chunks:
                if self._stop.is_set():
                    return
                info = self._store.get(chunk_id)
                if info is None or info.damaged:
                    continue
                self._pacer.take(info.length + OPEN_COST)
                checked = self._store.scrub(chunk_id, buffer)
                self.bytes += checked
                after = self._store.get(chunk_id)
                if after is not None and after.damaged:
                    self.errors += 1
                    log.error("scrub: chunk %016X is damaged", chunk_id)
            self.passes += 1
