"""Log lines: one per event, with level and node id, even for tracebacks and multi-line messages."""

import logging

from mooseng import logsetup
from mooseng.client import mount


def record(msg, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("mooseng.master", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_a_line_carries_time_level_node_and_logger():
    line = logsetup.formatter("master-2").format(record("chunkserver %d is down", 3))
    date, rest = line.split(" ", 1)
    assert date.endswith("Z") and "T" in date
    assert rest == "ERROR node=master-2 mooseng.master: chunkserver 3 is down"


def test_a_traceback_stays_on_the_line_of_its_event():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys

        line = logsetup.formatter("cs-1").format(record("op %s failed", "read", exc_info=sys.exc_info()))
    assert "\n" not in line
    assert " ERROR node=cs-1 mooseng.master: op read failed | Traceback (most recent call last): | " in line
    assert line.endswith("ValueError: bad | thing")


def test_setup_installs_one_handler_at_the_level(capsys):
    logsetup.setup("client-1", "warning")
    try:
        logging.getLogger("mooseng.x").info("hidden")
        logging.getLogger("mooseng.x").warning("shown")
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers[:] = []
        logging.getLogger().setLevel(logging.WARNING)
    assert "hidden" not in err
    assert err.count("\n") == 1 and " WARNING node=client-1 mooseng.x: shown" in err


def test_client_node_name_tells_hosts_and_mounts_apart(monkeypatch):
    monkeypatch.setattr(mount.socket, "gethostname", lambda: "client-2")
    assert mount.node_name("/mnt/mooseng") == "client@client-2:/mnt/mooseng"
    assert mount.node_name("/mnt/a") != mount.node_name("/mnt/b")
