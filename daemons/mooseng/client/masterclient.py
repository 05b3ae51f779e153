"""`meta` calls to the master: credentials, leader redirects and a retry bounded in time.

Every call carries (client_id, seq); all attempts of one call reuse its seq so that the master can
apply a retried mutation once even when the first reply was lost. An unreachable master becomes
FsError(EIO, "master unreachable: ...") after `timeout_s`, never a hang. EAGAIN from the master
means "chunk locked": another client is writing the chunk (write_chunk, or a shrink that would
cut it); the call is retried with backoff until it gets the lock, within the same `timeout_s`.
"""

import errno
import itertools
import logging
import random
import threading
import time
from typing import NamedTuple

from mooseng import rpc
from mooseng.errors import FsError

log = logging.getLogger(__name__)

_ATTEMPT_TIMEOUT_S = 10.0  # one RPC; a hung master costs this much before the next endpoint is tried
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 0.25  # an election takes 0.8 to 1.6 s: retry often enough to see the new leader at once
_CONNECT_TIMEOUT_S = 2.0
_LOCKED_FIRST_S = 0.002  # a small file's write session holds its chunk for a few ms
_LOCKED_MAX_S = 0.1


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
        self._clients = rpc.Clients(_ATTEMPT_TIMEOUT_S, min(_CONNECT_TIMEOUT_S, self.timeout_s))
        self._target = self.endpoints[0]

    def call(self, op: str, args: dict | None = None, cred: Cred = ROOT):
        """Run one op and return its result; errno != 0 raises FsError(errno, message).

        A request the master refuses as malformed is EINVAL; any other refusal is EIO.
        """
        params = {"op": op, "args": args or {}, "client_id": self.client_id, "seq": next(self._seq),
                  "uid": cred.uid, "gid": cred.gid, "gids": list(cred.gids)}
        deadline = time.monotonic() + self.timeout_s
        backoff, locked = _BACKOFF_FIRST_S, _LOCKED_FIRST_S
        failures = redirects = 0
        last = "no endpoint answered"
        while True:
            addr = self._target
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FsError(errno.EIO, f"master unreachable: {last} (gave up after {self.timeout_s:g} s)")
            try:
                reply, _ = self._clients.get(addr).call("meta", params, timeout_s=min(remaining, _ATTEMPT_TIMEOUT_S))
            except rpc.RpcError as exc:
                if exc.status != rpc.UNAVAILABLE:
                    kind = errno.EINVAL if exc.status == rpc.INVALID_ARGUMENT else errno.EIO
                    raise FsError(kind, f"master {addr} refused {op}: {exc}") from None
                last = f"{addr}: {exc.message}"
                self._advance(addr)
                failures += 1
            else:
                if reply["leader"]:
                    last = f"{addr} is not the leader, redirected to {reply['leader']}"
                    self._target = reply["leader"]
                    redirects += 1
                elif reply["errno"] == errno.EAGAIN:
                    # Nothing was done (the seq is not used up): wait for the writer, try again.
                    if time.monotonic() + locked >= deadline:
                        raise FsError(errno.EIO, f"{op}: {reply['message']} (still after {self.timeout_s:g} s)")
                    time.sleep(random.uniform(locked / 2, locked))
                    locked = min(locked * 2, _LOCKED_MAX_S)
                    continue
                else:
                    if reply["errno"]:
                        raise FsError(reply["errno"], reply["message"])
                    return reply["result"]
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

    def close(self) -> None:
        self._clients.close()
