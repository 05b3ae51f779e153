"""Meta RPCs to the master: credentials, leader redirects and a retry bounded in time.

Every call carries (client_id, seq); all attempts of one call reuse its seq so that the master can
apply a retried mutation once even when the first reply was lost. An unreachable master becomes
FsError(EIO, "master unreachable: ...") after `timeout_s`, never a hang.
"""

import errno
import itertools
import logging
import random
import threading
import time
from typing import NamedTuple

import grpc

from mooseng import wire
from mooseng.errors import FsError
from mooseng.proto import mooseng_pb2 as pb
from mooseng.proto import mooseng_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# gRPC's default reconnect backoff grows to 120 s; a master (or chunkserver) that restarts must be
# found again within the client's own retry budget, so keep the channel's backoff short.
CHANNEL_OPTIONS = wire.GRPC_OPTIONS + [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_ATTEMPT_TIMEOUT_S = 10.0  # one RPC; a hung master costs this much before the next endpoint is tried
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 1.0


class Cred(NamedTuple):
    """The caller's credentials, checked by the master like a local file system checks them."""

    uid: int = 0
    gid: int = 0
    gids: tuple[int, ...] = ()


ROOT = Cred()


class Attr(NamedTuple):
    """An inode's attributes as the master returns them (times in ns, sclass a class name)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime: int
    mtime: int
    ctime: int
    sclass: str

    @classmethod
    def from_dict(cls, d: dict) -> "Attr":
        return cls(d["ino"], d["mode"], d["nlink"], d["uid"], d["gid"], d.get("rdev", 0), d["size"],
                   d["atime"], d["mtime"], d["ctime"], d.get("sclass", ""))


class MasterClient:
    """Thread-safe; one per client process (its client_id identifies the process to the master)."""

    def __init__(self, endpoints: list[str], timeout_s: float = 30.0, client_id: int | None = None):
        if not endpoints:
            raise ValueError("at least one master endpoint is needed")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        # 0 would read as "no client id" to a master that dedupes retries.
        self.client_id = client_id if client_id is not None else random.getrandbits(64) or 1
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._stubs: dict[str, pb_grpc.MasterStub] = {}
        self._channels: list[grpc.Channel] = []
        self._target = self.endpoints[0]

    def call(self, op: str, args: dict | None = None, cred: Cred = ROOT):
        """Run one Meta op and return its decoded result; errno != 0 raises FsError(errno, message)."""
        request = pb.MetaRequest(op=op, args=wire.pack(args or {}), client_id=self.client_id,
                                 seq=next(self._seq), uid=cred.uid, gid=cred.gid, gids=cred.gids)
        deadline = time.monotonic() + self.timeout_s
        backoff = _BACKOFF_FIRST_S
        failures = redirects = 0
        last = "no endpoint answered"
        while True:
            addr = self._target
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FsError(errno.EIO, f"master unreachable: {last} (gave up after {self.timeout_s:g} s)")
            try:
                reply = self._stub(addr).Meta(request, timeout=min(remaining, _ATTEMPT_TIMEOUT_S))
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in _RETRYABLE:
                    kind = errno.EINVAL if code == grpc.StatusCode.INVALID_ARGUMENT else errno.EIO
                    raise FsError(kind, f"master {addr} refused {op}: {code.name}: {exc.details()}") from None
                last = f"{addr}: {code.name}: {exc.details()}"
                self._advance(addr)
                failures += 1
            else:
                if reply.leader:
                    last = f"{addr} is not the leader, redirected to {reply.leader}"
                    self._target = reply.leader
                    redirects += 1
                else:
                    if reply.errno:
                        raise FsError(reply.errno, reply.message)
                    return wire.unpack(reply.result) if reply.result else None
            # Each endpoint may be tried, and a redirect followed, at once (a failover); after a
            # whole round without an answer, back off.
            if failures >= len(self.endpoints) or redirects > len(self.endpoints):
                time.sleep(max(0.0, min(backoff, deadline - time.monotonic())))
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _advance(self, failed: str) -> None:
        """After `failed` did not answer, aim at the endpoint after it (or the first one)."""
        with self._lock:
            if self._target != failed:
                return  # another thread already moved on
            try:
                i = self.endpoints.index(failed) + 1
            except ValueError:  # a redirect target that died: start over with the configured list
                i = 0
            self._target = self.endpoints[i % len(self.endpoints)]

    def _stub(self, addr: str) -> pb_grpc.MasterStub:
        stub = self._stubs.get(addr)
        if stub is None:
            with self._lock:
                stub = self._stubs.get(addr)
                if stub is None:
                    channel = grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)
                    self._channels.append(channel)
                    stub = self._stubs[addr] = pb_grpc.MasterStub(channel)
        return stub

    def close(self) -> None:
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._stubs.clear()
