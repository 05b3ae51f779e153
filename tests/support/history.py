"""Record a concurrent history of file system operations against a live cluster, for lincheck.

    recorder = Recorder()
    fs = recorder.client(Client(cluster.master_endpoints), client_id=1, parent=dir_ino)
    fs.create("a"); fs.write("a", b"0123456789abcdef"); fs.rename("a", "b"); fs.read("b")
    workers: fs.create(name) -> "ok" | "EEXIST" | UNKNOWN_OUTCOME, and so on
    check(recorder.history())

Each thread uses its own `RecordingClient` over its own `mooseng.client.fs.Client` (the client
library caches file data per process, which would hide other clients' writes). A call that ends
in its operation's clean errno (EEXIST for create, ENOENT otherwise) is recorded with that
result; any other exception (a timeout, EIO while the masters elect a leader) is recorded as an
unknown outcome and the call returns UNKNOWN_OUTCOME instead of raising.

`write` and `read` are not one master call: they look the name up, then open, write or read,
and close the inode, which a concurrent rename may have moved to another name meanwhile (and
a write's data is visible only once the close stores it). So each is recorded as two
operations of lincheck.FileSystemModel: open(name, handle) for the lookup, then
write_close(handle, value) or read_close(handle) for the rest; handle is (client_id, n). Both
halves end cleanly in ENOENT: the name was not there, or the inode was gone when the second
half opened it. A failed write-back (at the close) is always an unknown outcome: readers may
have seen the data on the chunkservers before the master refused the commit. (A write to an
inode unlinked during the close succeeds, as on Linux, and concurrent writers of one chunk take
turns, so on a healthy cluster neither fails.)
Values must all be `value_size` bytes long, so that a write replaces the whole content without
a separate truncation.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable

from mooseng.client.fs import Client
from mooseng.errors import FsError

from support.lincheck import EEXIST, ENOENT, OK, Operation

UNKNOWN_OUTCOME = "unknown outcome"
CLEAN_ERRNOS = {errno.EEXIST: EEXIST, errno.ENOENT: ENOENT}


class Recorder:
    """Collects the operations of all its clients; thread-safe."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns):
        self.clock = clock
        self._lock = threading.Lock()
        self._ops: list[Operation] = []
        self.errors: list[tuple[Operation, str]] = []  # unknown outcomes with what the client saw

    def client(self, fs: Client, client_id, parent: int, value_size: int = 16) -> RecordingClient:
        return RecordingClient(self, fs, client_id, parent, value_size)

    def history(self) -> list[Operation]:
        with self._lock:
            return list(self._ops)

    def run(self, client_id, op: str, args: tuple, call: Callable[[], object], clean: frozenset[int]):
        """Time `call` and record it; FsErrors with an errno in `clean` are results."""
        invoke = self.clock()
        error = None
        try:
            result = call()
        except FsError as exc:
            if exc.errno in clean:
                result = CLEAN_ERRNOS[exc.errno]
            else:
                error = f"FsError({errno.errorcode.get(exc.errno, exc.errno)}): {exc}"
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the outcome is unknown
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            recorded = Operation(client_id, op, args, invoke, self.clock(), result)
        else:
            recorded = Operation(client_id, op, args, invoke, None, None)
        with self._lock:
            self._ops.append(recorded)
            if error is not None:
                self.errors.append((recorded, error))
        return UNKNOWN_OUTCOME if error is not None else result


class RecordingClient:
    """The operations of lincheck.FileSystemModel on the names of directory `parent`, recorded."""

    def __init__(self, recorder: Recorder, fs: Client, client_id, parent: int, value_size: int):
        self.recorder = recorder
        self.fs = fs
        self.client_id = client_id
        self.parent = parent
        self.value_size = value_size
        self._handles = 0

    def _run(self, op: str, args: tuple, call: Callable[[], object], clean: int):
        return self.recorder.run(self.client_id, op, args, call, frozenset({clean}))

    def create(self, name: str):
        def call():
            fh, _ = self.fs.create(self.parent, name, 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            self.fs.release(fh)
            return OK
        return self._run("create", (name,), call, errno.EEXIST)

    def unlink(self, name: str):
        def call():
            self.fs.unlink(self.parent, name)
            return OK
        return self._run("unlink", (name,), call, errno.ENOENT)

    def rename(self, src: str, dst: str):
        def call():
            self.fs.rename(self.parent, src, self.parent, dst)
            return OK
        return self._run("rename", (src, dst), call, errno.ENOENT)

    def lookup(self, name: str):
        def call():
            self.fs.lookup(self.parent, name)
            return OK
        return self._run("lookup", (name,), call, errno.ENOENT)

    def write(self, name: str, value: bytes):
        """open(name, handle) then write_close(handle, value): see the module docstring."""
        if len(value) != self.value_size:
            raise ValueError(f"write of {len(value)} bytes: every value must be {self.value_size} bytes")

        def io(fh):
            self.fs.write(fh, 0, value)
            return OK
        return self._on_inode(name, os.O_WRONLY, "write_close", (value,), io)

    def read(self, name: str):
        """open(name, handle) then read_close(handle): see the module docstring."""
        return self._on_inode(name, os.O_RDONLY, "read_close", (),
                              lambda fh: bytes(self.fs.read(fh, 0, self.value_size + 1)))

    def _on_inode(self, name: str, flags: int, op: str, args: tuple, io: Callable[[int], object]):
        """Look `name` up (recorded as open), then open the inode, run `io` and close it
        (recorded as `op`: a writer's data is stored by the close)."""
        self._handles += 1
        handle = (self.client_id, self._handles)
        found = {}

        def lookup():
            found["ino"] = self.fs.lookup(self.parent, name).ino
            return OK
        opened = self._run("open", (name, handle), lookup, errno.ENOENT)
        if opened != OK:
            return opened

        def use():
            fh = self.fs.open(found["ino"], flags)
            try:
                return io(fh)
            finally:
                self.fs.release(fh)
        return self.recorder.run(self.client_id, op, (handle,) + args, use, frozenset({errno.ENOENT}))
