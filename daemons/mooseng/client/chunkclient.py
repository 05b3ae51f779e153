"""Chunk data to and from chunkservers: read from one copy, write to all copies, truncate copies.

The data path avoids copies that protobuf would add: upb accepts only `bytes` for a bytes field
and copies it again when serialising, so Write messages are encoded here from memoryviews (the
header fields by protobuf, the data field by hand: concatenated protobuf encodings merge), and
Read replies are decoded into a memoryview of the received message.
"""

import errno
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, NamedTuple

import grpc
import grpc.experimental

from mooseng import wire
from mooseng.errors import FsError
from mooseng.proto import mooseng_pb2 as pb

log = logging.getLogger(__name__)

PIECE = 1 << 20  # bytes per Write message
_WRITE_TAG_OFFSET = b"\x28"  # field 5, varint
_WRITE_TAG_DATA = b"\x32"  # field 6, length-delimited
_READ_TAG_DATA = 0x0A  # ReadReply field 1, length-delimited
# gRPC's default reconnect backoff grows to 120 s; a chunkserver that restarts must be found again
# within the client's own retry budget, so keep the channel's backoff short. Read streams are
# consumed in the calling thread; without SingleThreadedUnaryStream gRPC starts a thread per call
# to drive the stream, which costs more than a small random read itself.
_OPTIONS = wire.GRPC_OPTIONS + [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
]
SUSPECT_S = 10.0  # a copy that failed a read is tried last for this long
_ZEROS = memoryview(bytes(PIECE))


def zeros(n: int) -> list[memoryview]:
    """`n` zero bytes as views of one shared buffer (fresh zeroed memory is slow to touch)."""
    return [_ZEROS[:min(PIECE, n - pos)] for pos in range(0, n, PIECE)]


class WriteResult(NamedTuple):
    ok: list[str]  # addresses that stored the data
    failed: list[str]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_write(header: bytes, offset: int, parts: list) -> bytes:
    """One WriteRequest: `header` (serialised header fields, or b""), offset and the data that is
    `parts` joined; one copy."""
    size = sum(len(p) for p in parts)
    return b"".join((header, _WRITE_TAG_OFFSET, _varint(offset), _WRITE_TAG_DATA, _varint(size), *parts))


def decode_read(raw: bytes) -> memoryview:
    """The data of a ReadReply without copying it out of the message."""
    view = memoryview(raw)
    if not raw:
        return view
    if raw[0] == _READ_TAG_DATA:
        n = shift = 0
        pos = 1
        while pos < len(raw):
            byte = raw[pos]
            n |= (byte & 0x7F) << shift
            pos += 1
            if byte < 0x80:
                break
            shift += 7
        if pos + n == len(raw):
            return view[pos:]
    return memoryview(pb.ReadReply.FromString(raw).data)  # any other layout: let protobuf decode it


class _Stub:
    """The three ChunkServer methods on one channel, Read and Write with the codecs above."""

    def __init__(self, channel: grpc.Channel):
        self.read = channel.unary_stream(
            "/mooseng.v1.ChunkServer/Read",
            request_serializer=pb.ReadRequest.SerializeToString,
            response_deserializer=decode_read,
        )
        self.write = channel.stream_unary(
            "/mooseng.v1.ChunkServer/Write",
            request_serializer=None,  # messages arrive already encoded
            response_deserializer=pb.WriteReply.FromString,
        )
        self.truncate = channel.unary_unary(
            "/mooseng.v1.ChunkServer/Truncate",
            request_serializer=pb.TruncateRequest.SerializeToString,
            response_deserializer=pb.TruncateReply.FromString,
        )


def _why(exc: Exception) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


class ChunkClient:
    """Thread-safe; one per client process. `write_mode` is "chain" (MooseFS-style forwarding:
    one stream to the first copy, which passes the data on) or "fanout" (one stream per copy)."""

    def __init__(self, write_mode: str = "chain", timeout_s: float = 60.0):
        if write_mode not in ("chain", "fanout"):
            raise ValueError(f"write_mode must be chain or fanout, not {write_mode!r}")
        self.write_mode = write_mode
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._stubs: dict[str, _Stub] = {}
        self._channels: list[grpc.Channel] = []
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mooseng-fanout")
        self._suspect: dict[str, float] = {}  # address -> until when it is tried last

    def read(self, chunk_id: int, version: int, offset: int, length: int, servers: list[str]) -> list[memoryview]:
        """`length` bytes at `offset` of the chunk from the first copy that delivers them, as the
        pieces they arrived in (joining them would cost a copy that most readers do not need).

        Any failure of a copy, including DATA_LOSS (a CRC mismatch), moves on to the next copy;
        bytes past what a copy stores read as zeros. EIO names every copy that failed and why.
        """
        request = pb.ReadRequest(chunk_id=chunk_id, version=version, offset=offset, length=length)
        failures = []
        now = time.monotonic()
        for addr in sorted(servers, key=lambda a: self._suspect.get(a, 0) > now):  # stable: keeps the order
            try:
                return self._read_from(addr, request, length)
            except (grpc.RpcError, FsError) as exc:
                self._suspect[addr] = time.monotonic() + SUSPECT_S
                failures.append(f"{addr}: {_why(exc)}")
                log.warning("read of chunk %016x v%d from %s failed: %s", chunk_id, version, addr, _why(exc))
        detail = "; ".join(failures) or "no copy is available"
        raise FsError(errno.EIO, f"chunk {chunk_id:016x} v{version}: no copy could be read: {detail}")

    def _read_from(self, addr: str, request: pb.ReadRequest, length: int) -> list[memoryview]:
        pieces = [piece for piece in self._stub(addr).read(request, timeout=self.timeout_s) if piece]
        got = sum(len(piece) for piece in pieces)
        if got > length:
            raise FsError(errno.EIO, f"sent {got} bytes, asked for {length}")
        return pieces + zeros(length - got)

    def write(self, chunk_id: int, version: int, expect_version: int, servers: list[str],
              extents: Iterable[tuple[int, memoryview]]) -> WriteResult:
        """Store `extents` ((offset in chunk, data) pairs) on every copy in `servers`.

        Copies that fail are reported and left out (the chunk is then under goal); EIO only if no
        copy stored the data. `extents` must stay unchanged until this returns.
        """
        extents = list(extents)
        header = dict(chunk_id=chunk_id, version=version, expect_version=expect_version)
        if self.write_mode == "chain":
            ok, failed, why = self._write_chain(header, list(servers), extents)
        else:
            ok, failed, why = self._write_fanout(header, list(servers), extents)
        if failed:
            log.warning("write of chunk %016x v%d: copies failed: %s", chunk_id, version, "; ".join(why))
        if not ok:
            detail = "; ".join(why) or "no copy is available"
            raise FsError(errno.EIO, f"chunk {chunk_id:016x} v{version}: no copy stored the data: {detail}")
        return WriteResult(ok, failed)

    def _write_chain(self, header, servers, extents):
        """One stream to the head with the rest as its chain; if the head itself fails, the
        downstream copies never got a complete stream, so the chain is retried without it."""
        ok, failed, why = [], [], []
        while servers and not ok:
            head, chain = servers[0], servers[1:]
            first = pb.WriteRequest(chain=chain, **header).SerializeToString()
            try:
                reply = self._stub(head).write(self._messages(first, extents), timeout=self.timeout_s)
            except grpc.RpcError as exc:
                failed.append(head)
                why.append(f"{head}: {_why(exc)}")
                servers = chain
                continue
            ok = list(reply.ok)
            failed += list(reply.failed)
            why += [f"{addr}: failed in the chain" for addr in reply.failed]
            break
        return ok, failed, why

    def _write_fanout(self, header, servers, extents):
        first = pb.WriteRequest(**header).SerializeToString()
        futures = [(addr, self._pool.submit(self._write_one, addr, first, extents)) for addr in servers]
        ok, failed, why = [], [], []
        for addr, future in futures:
            try:
                future.result()
                ok.append(addr)
            except grpc.RpcError as exc:
                failed.append(addr)
                why.append(f"{addr}: {_why(exc)}")
        return ok, failed, why

    def _write_one(self, addr, first, extents):
        return self._stub(addr).write(self._messages(first, extents), timeout=self.timeout_s)

    @staticmethod
    def _messages(first: bytes, extents) -> Iterator[bytes]:
        """The stream: the first message carries the header (`first`, serialised); contiguous
        extents are joined into messages of up to PIECE bytes."""
        run: list[memoryview] = []
        run_start = run_len = 0
        for offset, data in extents:
            view = memoryview(data)
            pos = 0
            while pos < len(view):
                if run and (run_start + run_len != offset + pos or run_len == PIECE):
                    yield encode_write(first, run_start, run)
                    first, run = b"", []
                if not run:
                    run_start, run_len = offset + pos, 0
                take = min(PIECE - run_len, len(view) - pos)
                run.append(view[pos:pos + take])
                run_len += take
                pos += take
        if run:
            yield encode_write(first, run_start, run)
        elif first:  # nothing to write: still open the stream with its header
            yield first

    def truncate(self, chunk_id: int, version: int, expect_version: int, length: int,
                 servers: list[str]) -> WriteResult:
        """Cut every copy to `length` bytes at the new version; EIO if no copy could be cut."""
        request = pb.TruncateRequest(chunk_id=chunk_id, version=version, expect_version=expect_version, length=length)
        ok, failed, why = [], [], []
        for addr in servers:
            try:
                self._stub(addr).truncate(request, timeout=self.timeout_s)
                ok.append(addr)
            except grpc.RpcError as exc:
                failed.append(addr)
                why.append(f"{addr}: {_why(exc)}")
        if failed:
            log.warning("truncate of chunk %016x v%d: copies failed: %s", chunk_id, version, "; ".join(why))
        if not ok:
            detail = "; ".join(why) or "no copy is available"
            raise FsError(errno.EIO, f"chunk {chunk_id:016x} v{version}: no copy could be truncated: {detail}")
        return WriteResult(ok, failed)

    def _stub(self, addr: str) -> _Stub:
        stub = self._stubs.get(addr)
        if stub is None:
            with self._lock:
                stub = self._stubs.get(addr)
                if stub is None:
                    channel = grpc.insecure_channel(addr, options=_OPTIONS)
                    self._channels.append(channel)
                    stub = self._stubs[addr] = _Stub(channel)
        return stub

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._stubs.clear()
