"""Building parts of erasure-coded chunks on this server: rebuilds and conversions.

The master orders builds in heartbeat replies (`build: [{chunk_id, version, ec: [k, m], part,
sources: [{part, address}], length}]`, docs/DESIGN.md "Erasure coding"); the `build` rpc runs one
directly. Make `part` of the chunk at `version` from the sources at that version: source part -1
is a full copy, 0..k+m-1 a part; target part -1 is a full copy (parts -> copy), 0..k+m-1 a part
(a rebuild from k parts, or copy -> parts when a source is a full copy).

Every source is first asked for its `crc_table` (its stored length, at the version); a source at
another version, unreachable, or storing a length no part of this chunk can have (ec.check_sources)
is ignored and reported, never decoded. The rows needed are pulled with ordinary `read` calls
(checked against their CRCs at the source), decoded or encoded here, written to a temporary file
whose CRCs are computed here (the content is new), synced and renamed into place as replication
does (store.ReplicaWriter); a source failing mid-way is replaced by a spare one. The new part is
reported `added`, the outcome as `built: [{chunk_id, part, version, bytes, error}]`.

Rate: builds share the replicator's Pacer (`replication_mb_s` for all repair traffic together).
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mooseng import ec, rpc
from mooseng.chunkserver.replicator import Pacer
from mooseng.chunkserver.store import ChunkStore
from mooseng.constants import BLOCK_SIZE, CHUNK_SIZE
from mooseng.errors import FsError
from mooseng.wire import parse_addr

log = logging.getLogger(__name__)

B = BLOCK_SIZE
STEP_BYTES = 4 << 20  # bytes read per source and step (a client's read size, too)
CALL_TIMEOUT_S = 30.0
FETCH_WORKERS = 16
_U64 = (1 << 64) - 1


class BuildError(FsError):
    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


@dataclass(frozen=True)
class Source:
    part: int  # -1: a full copy
    address: str


@dataclass(frozen=True)
class Order:
    chunk_id: int
    version: int
    k: int
    m: int
    part: int  # -1: a full copy
    sources: tuple[Source, ...]
    length: int

    @property
    def target(self) -> int:
        """The id the built piece is stored under."""
        return self.chunk_id if self.part < 0 else ec.part_id(self.chunk_id, self.part)

    def stored_id(self, source: Source) -> int:
        return self.chunk_id if source.part < 0 else ec.part_id(self.chunk_id, source.part)

    def name(self) -> str:
        what = "a full copy" if self.part < 0 else f"part {self.part}"
        return f"build of {what} of chunk {self.chunk_id:016X} version {self.version} ({self.k}+{self.m})"


def parse_order(raw) -> Order:
    """An Order from the master's (or the rpc's) map; ValueError naming the problem."""
    if type(raw) is not dict:
        raise ValueError(f"build order must be a map, got {type(raw).__name__}")
    keys = {"chunk_id", "version", "ec", "part", "sources", "length"}
    if raw.keys() != keys:
        raise ValueError(f"build order: missing {sorted(keys - raw.keys())}, unknown "
                         f"{sorted(map(str, raw.keys() - keys))}; takes {sorted(keys)}")
    chunk_id, version, geometry, part, sources, length = (raw[key] for key in
                                                          ("chunk_id", "version", "ec", "part", "sources", "length"))
    if type(chunk_id) is not int or not 0 < chunk_id <= ec.MAX_CHUNK_ID:
        raise ValueError(f"build order: chunk_id = {chunk_id!r} is not a chunk id (1..2^56-1)")
    if type(version) is not int or not 0 < version <= _U64:
        raise ValueError(f"build order: version = {version!r} is not a version (u64 > 0)")
    if type(geometry) not in (list, tuple) or len(geometry) != 2:
        raise ValueError(f"build order: ec = {geometry!r} is not [k, m] (a build needs the chunk's geometry)")
    k, m = geometry
    ec.check_geometry(k, m)
    if type(part) is not int or not -1 <= part < k + m:
        raise ValueError(f"build order: part = {part!r} is not -1 (a full copy) or 0..{k + m - 1}")
    if type(length) is not int or not 0 <= length <= CHUNK_SIZE:
        raise ValueError(f"build order: length = {length!r} is not a chunk length (0..{CHUNK_SIZE})")
    if type(sources) is not list or not sources:
        raise ValueError("build order: sources must be a non-empty list of {part, address}")
    parsed = []
    for s in sources:
        if type(s) is not dict or s.keys() != {"part", "address"}:
            raise ValueError(f"build order: source {s!r:.80} is not {{part, address}}")
        if type(s["part"]) is not int or not -1 <= s["part"] < k + m:
            raise ValueError(f"build order: source part {s['part']!r} is not -1 or 0..{k + m - 1}")
        try:
            parse_addr(s["address"])
        except (TypeError, ValueError):
            raise ValueError(f"build order: source address {s['address']!r:.80} is not host:port") from None
        parsed.append(Source(s["part"], s["address"]))
    if len(set(parsed)) != len(parsed):
        raise ValueError("build order: a source is listed twice")
    return Order(chunk_id, version, k, m, part, tuple(parsed), length)


@dataclass
class Plan:
    """What a build reads and writes, decided from the sources' stored lengths (pure: plan())."""

    length: int  # bytes the built piece stores
    rows: int  # rows read (and checked past `length`)
    copy: tuple[Source, int] | None = None  # encode from this full copy (and its length)
    parts: list[Source] = field(default_factory=list)  # decode from the first k, the rest spares
    ignored: list[str] = field(default_factory=list)  # "part p at address: why"


def plan(order: Order, stored: dict[Source, int | str]) -> Plan:
    """The plan for `order` given each source's stored length (or why it could not be asked).

    BuildError if no plan works: fewer than k usable parts, or nothing to build from.
    """
    k, m = order.k, order.m
    ignored = [f"{_label(s)}: {v}" for s, v in stored.items() if isinstance(v, str)]
    lengths = {s: v for s, v in stored.items() if not isinstance(v, str)}
    if order.part < 0 and any(s.part < 0 for s in lengths):
        raise BuildError(f"{order.name()}: a copy from a full copy is a replication, not a build")
    for s in [s for s in lengths if s.part == order.part]:
        ignored.append(f"{_label(s)}: it is the piece being built")
        del lengths[s]
    copies = sorted((s for s in lengths if s.part < 0), key=lambda s: -lengths[s])
    if copies:
        source = copies[0]
        n = part_length = ec.part_lengths(lengths[source], k, m)[order.part]
        return Plan(part_length, -(-n // B), copy=(source, lengths[source]), ignored=ignored)
    by_part: dict[int, list[Source]] = {}
    for s in lengths:
        by_part.setdefault(s.part, []).append(s)
    # Two servers claiming one part: keep the first; check_sources sees one length per part.
    P, bad = ec.check_sources({p: lengths[ss[0]] for p, ss in by_part.items()}, k, m, order.length)
    good = []
    for p in sorted(by_part, key=lambda p: (p >= k, p)):  # data parts first: no decoding for a copy
        for s in by_part[p]:
            if p in bad:
                ignored.append(f"{_label(s)}: {bad[p]}")
            elif s is not by_part[p][0]:
                ignored.append(f"{_label(s)}: another source holds part {p} too")
            else:
                good.append(s)
    if len(good) < k:
        detail = "; ".join(ignored) or "no others given"
        raise BuildError(f"{order.name()}: {len(good)} usable part(s) of the {k} needed ({detail})")
    rows = -(-P // B)
    if order.part >= 0:
        nominal = ec.part_lengths(order.length, k, m)[order.part]
        length = P if order.part == 0 or order.part >= k else min(P, nominal)
        return Plan(length, rows, parts=good, ignored=ignored)
    ends = [ec.chunk_end(s.part, lengths[s], k) for s in good if s.part < k]
    length = min(order.length, rows * k * B)
    if max(ends, default=0) > length:
        raise BuildError(f"{order.name()}: the parts hold data up to byte {max(ends)} of the chunk, "
                         f"past its length {order.length}")
    return Plan(length, rows, parts=good, ignored=ignored)


def _label(source: Source) -> str:
    return f"{'copy' if source.part < 0 else f'part {source.part}'} at {source.address}"


def _all_zero(view) -> bool:
    data = bytes(view)
    return data.count(0) == len(data)


class Builder:
    """Runs build orders: submit() in the background (outcomes via take_results()), build() now."""

    def __init__(self, store: ChunkStore, workers: int, pacer: Pacer):
        self._store = store
        self._pacer = pacer
        self.on_done: Callable[[], None] = lambda: None  # after each one: the heartbeat reports it early
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="build")
        self._fetch = ThreadPoolExecutor(FETCH_WORKERS, thread_name_prefix="build-fetch")
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._results: list[dict] = []
        self._clients = rpc.Clients(timeout_s=CALL_TIMEOUT_S)
        self._stop = threading.Event()

    def submit(self, orders: list) -> None:
        for raw in orders:
            self._pool.submit(self._run, raw)

    def take_results(self) -> list[dict]:
        with self._lock:
            results, self._results = self._results, []
        return results

    def _run(self, raw) -> None:
        key = {k: raw.get(k) if type(raw) is dict else None for k in ("chunk_id", "part", "version")}
        try:
            n, error = self.build(parse_order(raw))["bytes"], ""
        except ValueError as exc:
            n, error = 0, f"malformed build order: {exc}"
            log.warning("%s", error)
        except (FsError, rpc.RpcError) as exc:
            n, error = 0, str(exc)
            log.warning("%s", exc)
        except Exception as exc:  # a bug: report it as a failure, keep the worker
            log.exception("build of chunk %s failed unexpectedly", key["chunk_id"])
            n, error = 0, f"internal error: {exc}"
        with self._lock:
            self._results.append({**key, "bytes": n, "error": error})
        self.on_done()

    def build(self, order: Order) -> dict:
        """Build the piece; returns {bytes, ignored}. FsError or rpc.RpcError if it did not work."""
        target = order.target
        with self._lock:
            if target in self._running:
                raise FsError(errno.EEXIST, f"{order.name()}: already running here")
            self._running.add(target)
        try:
            if self._store.get(target) is not None:
                raise FsError(errno.EEXIST, f"{order.name()}: chunk {target:016X} is already here")
            the_plan = plan(order, self._stored_lengths(order))
            for why in the_plan.ignored:
                log.warning("%s: ignoring %s", order.name(), why)
            replica = self._store.open_replica(target, order.version)
            try:
                if the_plan.copy is not None:
                    self._encode(order, the_plan, replica)
                else:
                    self._decode(order, the_plan, replica)
                replica.finish(the_plan.length, None)
            except rpc.RpcError as exc:  # a source's failure; its status would mislead the caller
                replica.abort()
                raise BuildError(f"{order.name()}: {exc}") from None
            except BaseException:
                replica.abort()
                raise
        finally:
            with self._lock:
                self._running.discard(target)
        log.info("%s: %d bytes", order.name(), the_plan.length)
        return {"bytes": the_plan.length, "ignored": the_plan.ignored}

    def _stored_lengths(self, order: Order) -> dict[Source, int | str]:
        """Each source's stored length at the version, or why it could not be had."""

        def ask(source: Source):
            try:
                reply, _ = self._clients.get(source.address).call(
                    "crc_table", {"chunk_id": order.stored_id(source), "version": order.version})
                return reply["length"]
            except rpc.RpcError as exc:
                return str(exc)
            except (KeyError, TypeError):
                return "malformed crc_table reply"

        futures = {s: self._fetch.submit(ask, s) for s in order.sources}
        return {s: f.result() for s, f in futures.items()}

    def _read(self, address: str, stored_id: int, version: int, offset: int, length: int) -> memoryview:
        self._pacer.take(length)
        if self._stop.is_set():
            raise FsError(errno.ECANCELED, "the chunkserver is stopping")
        reply, data = self._clients.get(address).call(
            "read", {"chunk_id": stored_id, "version": version, "offset": offset, "length": length})
        if reply.get("length") != length or len(data) != length:
            raise FsError(errno.EIO, f"sent {len(data)} bytes, asked for {length}")
        return memoryview(data)

    def _encode(self, order: Order, the_plan: Plan, replica) -> None:
        """Copy -> part: a data part takes its own blocks of the copy; a parity part reads the
        copy row by row and encodes it."""
        k, m = order.k, order.m
        source, copy_length = the_plan.copy
        codec = ec.codec(k, m)
        step = max(1, STEP_BYTES // (k * B))  # rows per step
        parity = [bytearray(step * B) for _ in range(m)]
        for first in range(0, the_plan.rows, step):
            rows = min(step, the_plan.rows - first)
            if order.part < k:
                spans = [((r * k + order.part) * B, min(B, copy_length - (r * k + order.part) * B))
                         for r in range(first, first + rows)]
                futures = [self._fetch.submit(self._read, source.address, order.chunk_id, order.version, *span)
                           for span in spans if span[1] > 0]
                pieces = [f.result() for f in futures]
            else:
                start = first * k * B
                stripe = self._read(source.address, order.chunk_id, order.version, start,
                                    min(rows * k * B, copy_length - start))
                pieces = ec.encode_rows(codec, stripe, parity)[order.part]
            for piece in pieces:
                take = min(len(piece), the_plan.length - replica.length)
                if take > 0:
                    replica.write(piece[:take])

    def _decode(self, order: Order, the_plan: Plan, replica) -> None:
        """Parts -> part or copy: rows of k sources in steps, a failed source swapped for a spare."""
        k, m = order.k, order.m
        codec = ec.codec(k, m)
        active, spares = list(the_plan.parts[:k]), list(the_plan.parts[k:])
        step = max(1, STEP_BYTES // B)
        for first in range(0, the_plan.rows, step):
            rows = min(step, the_plan.rows - first)
            while True:
                futures = {s: self._fetch.submit(self._read, s.address, order.stored_id(s), order.version,
                                                 first * B, rows * B) for s in active}
                got, failed = {}, []
                for s, f in futures.items():
                    try:
                        got[s.part] = f.result()
                    except (FsError, rpc.RpcError) as exc:
                        failed.append((s, exc))
                if not failed:
                    break
                for s, exc in failed:
                    the_plan.ignored.append(f"{_label(s)}: {exc}")
                    log.warning("%s: source %s failed, %s", order.name(), _label(s),
                                "trying a spare" if spares else "no spare left")
                    active.remove(s)
                    if not spares:
                        raise BuildError(f"{order.name()}: {len(active)} usable part(s) of the {k} needed "
                                         f"({'; '.join(the_plan.ignored)})")
                    active.append(spares.pop(0))
            inputs = [got.get(p) for p in range(k + m)]
            if order.part >= 0:
                out = ec.decode_rows(codec, inputs, rows, [order.part])[0]
            else:
                lost = [p for p in range(k) if inputs[p] is None]
                for p, buf in zip(lost, ec.decode_rows(codec, inputs, rows, lost) if lost else []):
                    inputs[p] = buf
                out = memoryview(bytearray(b"".join(ec.gather({p: (first * B, inputs[p]) for p in range(k)},
                                                              first * k * B, rows * k * B, k))))
            take = max(0, min(len(out), the_plan.length - replica.length))
            if not _all_zero(out[take:]):
                raise BuildError(f"{order.name()}: the sources hold data past the {the_plan.length} bytes "
                                 f"the piece stores for a chunk of {order.length} bytes")
            if take:
                replica.write(out[:take])

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._fetch.shutdown(wait=True, cancel_futures=True)
        self._clients.close()
