"""Framed msgpack request/reply over TCP: the transport of the latency-bound paths.

Why not gRPC here: on these machines a Python gRPC unary call between two processes costs
~620 us (290 us client CPU + 500 us server CPU) against ~66 us through this module
(bench/transport_bench.py; BENCHMARKS.md). Metadata operations are
one or two round trips each, so the transport sets the ceiling of creates and stats per second.

Wire format. A connection starts with the 4-byte magic ``MNG1`` from the client. Every message
is one frame::

    u32 header_length | u32 data_length | header (msgpack) | data (raw bytes)

A request header is ``[method, params]``; a reply header is ``[status, message, result]``.
The optional raw data section carries chunk data without msgpack copies. One request is in
flight per connection; clients keep a pool of connections for concurrency.

Every call is on the latency path of a file-system operation, so each costs few system calls:
frames are read through a small buffer (the prefix, the header and the start of the data usually
come in one recv), and sockets stay in blocking mode with the kernel enforcing the call timeout
(SO_RCVTIMEO/SO_SNDTIMEO) instead of a poll before every recv and send.
"""

import logging
import socket
import struct
import threading
import time
from typing import Callable

import msgpack

from mooseng.constants import CHUNK_SIZE
from mooseng.wire import parse_addr

log = logging.getLogger(__name__)

MAGIC = b"MNG1"
_FRAME = struct.Struct("<II")
MAX_HEADER = 16 * 1024 * 1024
MAX_DATA = CHUNK_SIZE + 1024 * 1024

# Reply status codes (the names follow gRPC's, which operators already know).
OK = 0
INVALID_ARGUMENT = 3
NOT_FOUND = 5
ALREADY_EXISTS = 6
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15
STATUS_NAMES = {
    OK: "OK",
    INVALID_ARGUMENT: "INVALID_ARGUMENT",
    NOT_FOUND: "NOT_FOUND",
    ALREADY_EXISTS: "ALREADY_EXISTS",
    RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    FAILED_PRECONDITION: "FAILED_PRECONDITION",
    ABORTED: "ABORTED",
    INTERNAL: "INTERNAL",
    UNAVAILABLE: "UNAVAILABLE",
    DATA_LOSS: "DATA_LOSS",
}


class RpcError(Exception):
    """A call failed at the transport or protocol level (not a file-system errno)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{STATUS_NAMES.get(status, status)}: {message}")
        self.status = status
        self.message = message


_BUFFER = 8192  # bytes a frame reader asks for at once
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)  # an int: or-ing the enum flags costs a Python call


class _Reader:
    """Frames from one socket, read through a buffer; bytes past a frame stay for the next one."""

    __slots__ = ("sock", "buf", "start", "end")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray(_BUFFER)
        self.start = self.end = 0

    def _fill(self, need: int) -> None:
        """Have at least `need` (<= _BUFFER) bytes buffered."""
        if self.start == self.end:
            self.start = self.end = 0
        elif self.start + need > _BUFFER:
            self.buf[:self.end - self.start] = self.buf[self.start:self.end]
            self.end -= self.start
            self.start = 0
        view = memoryview(self.buf)
        while self.end - self.start < need:
            n = self.sock.recv_into(view[self.end:])
            if n == 0:
                raise ConnectionError("connection closed by peer")
            self.end += n

    def take(self, size: int) -> bytearray:
        """The next `size` bytes: what is buffered, then straight from the socket."""
        out = bytearray(size)
        have = min(size, self.end - self.start)
        out[:have] = self.buf[self.start:self.start + have]
        self.start += have
        view = memoryview(out)
        while have < size:
            n = self.sock.recv_into(view[have:], size - have)
            if n == 0:
                raise ConnectionError("connection closed by peer")
            have += n
        return out

    def small(self, size: int) -> bytes:
        self._fill(size)
        out = bytes(self.buf[self.start:self.start + size])
        self.start += size
        return out

    def frame(self) -> tuple[bytes | bytearray, bytearray]:
        self._fill(_FRAME.size)
        header_len, data_len = _FRAME.unpack_from(self.buf, self.start)
        self.start += _FRAME.size
        if header_len > MAX_HEADER or data_len > MAX_DATA:
            raise ConnectionError(f"frame too large ({header_len} + {data_len} bytes)")
        header = self.small(header_len) if header_len <= _BUFFER else self.take(header_len)
        data = self.take(data_len) if data_len else bytearray()
        return header, data


def _send_frame(sock: socket.socket, header: bytes, data=b"") -> None:
    head = _FRAME.pack(len(header), len(data)) + header
    if len(data) < 65536:
        sock.sendall(head + bytes(data))
        return
    sent = sock.sendmsg([head, data])  # one system call, no copy of the data
    if sent < len(head):
        sock.sendall(memoryview(head)[sent:])
        sent = len(head)
    if sent - len(head) < len(data):
        sock.sendall(memoryview(data)[sent - len(head):])


def _set_timeouts(sock: socket.socket, seconds: float) -> None:
    """Make blocking recv and send on `sock` give up (EAGAIN) after `seconds`."""
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


# A handler takes (params: dict, data: bytearray, peer: str) and returns result or (result, data).
Handler = Callable[[dict, bytearray, str], object]


class Reply:
    """A handler's result that also carries raw data (a buffer sent without msgpack copies), and
    optionally work to do once the reply is sent (`after()`, in the connection's thread: work
    the caller need not wait for)."""

    __slots__ = ("result", "data", "after")

    def __init__(self, result, data, after=None):
        self.result = result
        self.data = data
        self.after = after


class Server:
    """Thread-per-connection server: clients are few (mounts, chunkservers), calls are short."""

    def __init__(self, addr: str, handlers: dict[str, Handler], name: str = "rpc"):
        host, port = parse_addr(addr, allow_any_port=True)
        self._handlers = handlers
        self._name = name
        self._sock = socket.create_server((host, port), reuse_port=False, backlog=128)
        self.port = self._sock.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # signalled when the last running handler ends
        self._running = 0  # handlers running now; stop() lets them finish
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)

    def start(self) -> "Server":
        self._thread.start()
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, refuse further requests, let running handlers finish and send their
        replies (up to grace_s), then close every connection."""
        self._stopped.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        deadline = time.monotonic() + grace_s
        with self._lock:
            while self._running and self._idle.wait(max(0.0, deadline - time.monotonic())):
                pass
            if self._running:
                log.warning("%s: stopping with %d requests still running", self._name, self._running)
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn, f"{peer[0]}:{peer[1]}"), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        reader = _Reader(conn)
        pack = msgpack.Packer(use_bin_type=True).pack  # one per connection: making one per reply costs more than packing it
        try:
            if reader.small(len(MAGIC)) != MAGIC:
                log.warning("%s: %s is not a MooseNG peer (bad magic); closing", self._name, peer)
                return
            while True:
                header, data = reader.frame()
                with self._lock:
                    stopping = self._stopped.is_set()
                    if not stopping:
                        self._running += 1
                if stopping:
                    _send_frame(conn, pack([UNAVAILABLE, f"{self._name} is stopping", None]), b"")
                    continue
                try:
                    status, message, result, out, after = self._dispatch(header, data, peer)
                    _send_frame(conn, pack([status, message, result]), out)
                    if after is not None:
                        after()
                finally:
                    # A request counts as running until its reply is sent, so stop() cannot
                    # close the connection between the handler's return and the reply.
                    with self._lock:
                        self._running -= 1
                        if not self._running:
                            self._idle.notify_all()
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("%s: connection from %s failed", self._name, peer)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _dispatch(self, header: bytearray, data: bytearray, peer: str):
        try:
            request = msgpack.unpackb(header, raw=False, strict_map_key=False)
        except Exception as exc:
            return INVALID_ARGUMENT, f"malformed request: {exc}", None, b"", None
        if not (isinstance(request, list) and len(request) == 2 and isinstance(request[0], str) and isinstance(request[1], dict)):
            return INVALID_ARGUMENT, "malformed request: expected [method, params]", None, b"", None
        method, params = request
        handler = self._handlers.get(method)
        if handler is None:
            return INVALID_ARGUMENT, f"unknown method {method!r}", None, b"", None
        try:
            result = handler(params, data, peer)
        except RpcError as exc:
            return exc.status, exc.message, None, b"", None
        except Exception:
            log.exception("%s: %s from %s failed", self._name, method, peer)
            return INTERNAL, f"internal error in {method}", None, b"", None
        if isinstance(result, Reply):
            return OK, "", result.result, result.data, result.after
        return OK, "", result, b"", None


class _Conn:
    """A client connection: its socket, frame reader and the timeout its socket has now."""

    __slots__ = ("sock", "reader", "timeout", "pack")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = _Reader(sock)
        self.timeout = 0.0
        self.pack = msgpack.Packer(use_bin_type=True).pack  # one call at a time uses a connection

    def set_timeout(self, seconds: float) -> None:
        if seconds != self.timeout:
            _set_timeouts(self.sock, seconds)
            self.timeout = seconds

    def close(self) -> None:
        self.sock.close()


class Client:
    """Calls to one address over a pool of connections, so concurrent threads do not serialise."""

    def __init__(self, addr: str, timeout_s: float = 30.0, connect_timeout_s: float = 2.0):
        self.addr = addr
        self._host, self._port = parse_addr(addr)
        self._timeout = timeout_s
        self._connect_timeout = connect_timeout_s
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self) -> _Conn:
        try:
            sock = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
        except OSError as exc:
            raise RpcError(UNAVAILABLE, f"cannot connect to {self.addr}: {exc.strerror or exc}") from None
        sock.settimeout(None)  # blocking: timeouts come from _set_timeouts
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock)
        try:
            conn.set_timeout(self._connect_timeout)
            sock.sendall(MAGIC)
        except OSError as exc:
            sock.close()
            raise RpcError(UNAVAILABLE, f"cannot connect to {self.addr}: {exc.strerror or exc}") from None
        return conn

    def _pooled(self) -> _Conn | None:
        """An idle connection the peer has not closed. A restarted server's FIN makes an idle
        socket readable; sending on it would still succeed, and only the reply would fail."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            try:
                conn.sock.recv(1, _PEEK)
            except BlockingIOError:
                return conn  # nothing to read: still open
            except OSError:
                pass
            conn.close()

    def call(self, method: str, params: dict, data=b"", timeout_s: float | None = None):
        """Return (result, data). Raises RpcError; UNAVAILABLE means the request may not have run."""
        conn = self._pooled()
        fresh = conn is None
        if fresh:
            conn = self._connect()
        header = conn.pack([method, params])
        timeout = timeout_s or self._timeout
        try:
            conn.set_timeout(timeout)
            try:
                _send_frame(conn.sock, header, data)
            except OSError:
                if fresh:
                    raise
                # A pooled connection may have been closed by a restarted server: retry once fresh.
                conn.close()
                conn = self._connect()
                conn.set_timeout(timeout)
                _send_frame(conn.sock, header, data)
            reply, out = conn.reader.frame()
        except (BlockingIOError, socket.timeout):  # SO_RCVTIMEO / SO_SNDTIMEO ran out
            conn.close()
            raise RpcError(UNAVAILABLE, f"{method} to {self.addr} timed out") from None
        except (OSError, ConnectionError) as exc:
            conn.close()
            raise RpcError(UNAVAILABLE, f"{method} to {self.addr} failed: {exc}") from None
        with self._lock:
            if self._closed:
                conn.close()
            else:
                self._idle.append(conn)
        try:
            status, message, result = msgpack.unpackb(reply, raw=False, strict_map_key=False)
        except Exception as exc:
            raise RpcError(INTERNAL, f"malformed reply from {self.addr}: {exc}") from None
        if status != OK:
            raise RpcError(status, message)
        return result, out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Clients:
    """One Client per address, made on first use and closed together: every daemon and client
    that talks to many servers keeps its connections this way. Thread-safe."""

    def __init__(self, timeout_s: float = 30.0, connect_timeout_s: float = 2.0):
        self._timeout = timeout_s
        self._connect_timeout = connect_timeout_s
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}

    def get(self, addr: str) -> Client:
        client = self._clients.get(addr)
        if client is None:
            with self._lock:
                client = self._clients.get(addr)
                if client is None:
                    client = self._clients[addr] = Client(addr, self._timeout, self._connect_timeout)
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
