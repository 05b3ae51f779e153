"""Close-to-open consistency of the FUSE mount's page cache (client/fuse.py): an open drops the
kernel's cached pages of a file that changed since this mount last opened it, and the release of
a handle (asynchronous in FUSE) never hides another client's change from an open."""

from types import SimpleNamespace

import pytest

from mooseng.client import fuse
from mooseng.client.masterclient import Attr

INO = 7


def attr(mtime: int, size: int = 10_000) -> Attr:
    return Attr(ino=INO, mode=0o100644, nlink=1, uid=0, gid=0, rdev=0, size=size,
                atime=0, mtime=mtime, ctime=mtime, sclass="default")


class FakeClient:
    """What Operations asks of fs.Client for open and release: the master's attr at open (and
    the inode's attr becomes it), and at release the attr of this client's own latest change."""

    def __init__(self):
        self.current = attr(1)
        self.own: Attr | None = None
        self.during_open = lambda: None  # runs after the master answered, before open returns
        self.next_fh = 1

    def open(self, ino, flags, cred):
        fh, self.next_fh = self.next_fh, self.next_fh + 1
        self.during_open()
        self.during_open = lambda: None
        return fh

    def attr_of(self, fh):
        return self.current

    def release(self, fh):
        return self.own


@pytest.fixture
def ops(monkeypatch):
    dropped = []
    monkeypatch.setattr(fuse.llfuse, "invalidate_inode", lambda ino: dropped.append(ino))
    client = FakeClient()
    o = fuse.Operations(client, attr_timeout=1.0, entry_timeout=1.0)
    ctx = SimpleNamespace(uid=0, gid=0, pid=1)
    o.do_open = lambda: fuse.Operations.open.__wrapped__(o, INO, 0, ctx)
    o.do_release = lambda fh: fuse.Operations.release.__wrapped__(o, fh)
    return o, client, dropped


def test_an_open_after_another_clients_change_drops_the_pages(ops):
    o, client, dropped = ops
    o.do_release(o.do_open())
    o.do_release(o.do_open())
    assert dropped == []
    client.current = attr(2)  # another client rewrote the file
    o.do_open()
    assert dropped == [INO]


def test_a_readers_release_during_the_next_open_does_not_hide_a_change(ops):
    """The race behind a flake of test_fuse_posix's overwrite test: the first reader's RELEASE
    ran while the next OPEN was served, after it had learned the other client's version; the
    release recorded the inode's attr (that version) as seen, so the open kept stale pages."""
    o, client, dropped = ops
    first = o.do_open()  # reads version 1: its pages stay cached
    client.current = attr(2)  # another client rewrites the file
    client.during_open = lambda: o.do_release(first)
    o.do_open()
    assert dropped == [INO]


def test_a_writers_release_during_the_next_open_records_only_its_own_change(ops):
    o, client, dropped = ops
    writer = o.do_open()
    client.own = client.current = attr(2)  # the writer's own commit: its pages are right
    client.current = attr(3)  # then another client's change, learned by the next open
    client.during_open = lambda: o.do_release(writer)
    o.do_open()
    assert dropped == [INO]


def test_a_writers_own_change_keeps_the_pages(ops):
    o, client, dropped = ops
    fh = o.do_open()
    client.own = client.current = attr(2)
    o.do_release(fh)
    o.do_open()
    assert dropped == []


def test_a_late_release_does_not_overwrite_what_a_newer_open_saw(ops):
    o, client, dropped = ops
    writer = o.do_open()
    client.own = attr(2)
    client.current = attr(3)  # another client's change after the writer's
    o.do_open()  # sees 3, drops
    o.do_release(writer)  # must not put its own 2 back over the 3 ...
    o.do_open()  # ... or this open would drop the pages again for nothing
    assert dropped == [INO]
