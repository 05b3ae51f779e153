"""Where new chunk copies go: distinct live chunkservers with room, emptier servers first.

Pure: the caller passes the servers (registry state) and a random generator, so a choice is
reproducible in tests. The chunkserver picks the disk itself (the write protocol names none);
disks matter here only for deciding whether a server has room.
"""

import errno
import random
from collections.abc import Iterable

from mooseng.constants import CHUNK_SIZE
from mooseng.errors import FsError
from mooseng.master.registry import Server

# Free ratios closer than this count as equal, so that a burst of new chunks written between two
# heartbeats (free space not yet updated) spreads over similar servers instead of piling onto one.
BAND = 0.05


def free_ratio(server: Server, min_free: int = CHUNK_SIZE) -> float | None:
    """Free / total over the server's healthy disks; None when no healthy disk has `min_free` bytes."""
    healthy = [d for d in server.disks if d.healthy]
    if not any(d.free >= min_free for d in healthy):
        return None
    total = sum(d.total for d in healthy)
    return sum(d.free for d in healthy) / total if total else 0.0


def choose(
    servers: Iterable[Server],
    count: int,
    rng: random.Random,
    *,
    exclude: Iterable[int] = (),
    min_free: int = CHUNK_SIZE,
) -> list[Server]:
    """Pick up to `count` distinct alive servers with room for a chunk, emptiest band first.

    Fewer eligible servers than `count` gives fewer copies (the chunk is under goal, which is not
    an error); none at all raises ENOSPC. A server qualifies when it is alive and at least one of
    its healthy disks has `min_free` bytes free (a chunk may grow to CHUNK_SIZE).
    """
    excluded = set(exclude)
    candidates = []
    for server in sorted(servers, key=lambda s: s.server_id):
        if not server.alive or server.server_id in excluded:
            continue
        ratio = free_ratio(server, min_free)
        if ratio is not None:
            candidates.append((ratio, rng.random(), server))
    if not candidates:
        raise FsError(errno.ENOSPC, "no chunkserver with free space")
    best = max(ratio for ratio, _, _ in candidates)
    candidates.sort(key=lambda c: (int((best - c[0]) / BAND), c[1]))
    return [server for _, _, server in candidates[:count]]
