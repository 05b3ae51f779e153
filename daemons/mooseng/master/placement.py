"""Where new chunk copies and erasure-coded parts go: live chunkservers with room, emptier first.

Pure: the caller passes the servers (registry state) and a random generator, so a choice is
reproducible in tests. The chunkserver picks the disk itself (the write protocol names none):
copies of a chunk go to distinct servers, and the k+m parts of a chunk to distinct disks, which
the chunkserver ensures within itself. So for parts the master decides how many each server takes,
at most its healthy disks with room, and as evenly as possible: then no server holds more than m
parts whenever the cluster allows it (3 servers x 4 disks, 8+4: 4 each, so a whole server can be
lost), and the data parts 0..k-1 land on different servers in turn, so reads hit all of them.
"""

import errno
import random
from collections.abc import Iterable, Mapping

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


def part_slots(server: Server, min_free: int) -> int:
    """Parts of one chunk the server can take: its healthy disks with `min_free` bytes free."""
    return sum(1 for d in server.disks if d.healthy and d.free >= min_free)


def part_size(k: int) -> int:
    """The most a part of a k-data-part chunk holds."""
    return -(-CHUNK_SIZE // k)


def choose_parts(servers: Iterable[Server], sclass: str, k: int, m: int, rng: random.Random) -> list[Server]:
    """The server of each of the k+m parts of a new chunk (entry p: part p's server).

    Servers take parts in turn, emptiest band first, each up to its disks with room: the most
    even spread there is. Fewer such disks than k+m in the whole cluster raises ENOSPC naming the
    class and what it needs: a chunk is never stored with less protection than its class says.
    """
    need, min_free = k + m, part_size(k)
    ranked, total = [], 0
    for server in sorted(servers, key=lambda s: s.server_id):
        slots = part_slots(server, min_free) if server.alive else 0
        if slots:
            ranked.append((free_ratio(server, min_free), rng.random(), server, slots))
            total += slots
    if total < need:
        raise FsError(errno.ENOSPC, f"storage class {sclass!r} (erasure coding {k}+{m}) needs {need} disks with "
                                    f"{min_free >> 20} MiB free on live chunkservers; the cluster has {total}")
    best = max(r[0] for r in ranked)
    ranked.sort(key=lambda r: (int((best - r[0]) / BAND), r[1]))
    out: list[Server] = []
    for turn in range(max(r[3] for r in ranked)):
        for _, _, server, slots in ranked:
            if turn < slots and len(out) < need:
                out.append(server)
    return out


def part_target(
    servers: Iterable[Server],
    held: Mapping[int, int],
    k: int,
    m: int,
    rng: random.Random,
    *,
    exclude: Iterable[int] = (),
) -> Server | None:
    """The server for one more part of a chunk whose other parts are on `held` (server id ->
    parts of this chunk there): one with a disk to spare, below m parts of the chunk if any
    is, then the one with fewest, then the emptiest. None if no server can take it."""
    excluded, min_free = set(exclude), part_size(k)
    candidates = []
    for server in sorted(servers, key=lambda s: s.server_id):
        n = held.get(server.server_id, 0)
        if not server.alive or server.server_id in excluded or n >= part_slots(server, min_free):
            continue
        candidates.append((n >= m, n, -free_ratio(server, min_free), rng.random(), server))
    return min(candidates, key=lambda c: c[:4])[4] if candidates else None
