"""Linearizability of the metadata under leader kills: several clients create, rename, look up
and unlink the same few names in one directory through the client library while the leader is
killed (-9) and restarted, twice; the recorded history must be linearizable (tests/support/lincheck).
"""

from __future__ import annotations

import random
import threading
import time


from mooseng.client.fs import Client
from mooseng.client.masterclient import MasterClient
from support.history import Recorder
from support.lincheck import LINEARIZABLE, check

NAMES = ("a", "b", "c")
CLIENTS = 4
KILLS = 2
PHASE_S = 3.0  # workload time before, between and after the kills


def workload(fs, rng: random.Random, stop: threading.Event) -> None:
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        op = rng.choice(("create", "create", "rename", "lookup", "lookup", "unlink"))
        if op == "rename":
            src, dst = rng.sample(NAMES, 2)
            fs.rename(src, dst)
        else:
            getattr(fs, op)(rng.choice(NAMES))
        time.sleep(rng.uniform(0, 0.02))


def test_history_during_leader_kills_is_linearizable(masters):
    setup = MasterClient(masters.master_endpoints, timeout_s=20)
    parent = setup.call("mkdir", {"parent": 1, "name": b"lin", "mode": 0o755})["ino"]
    setup.close()
    recorder = Recorder()
    stop = threading.Event()
    clients = [Client(masters.master_endpoints, timeout_s=10) for _ in range(CLIENTS)]
    threads = [
        threading.Thread(target=workload, args=(recorder.client(c, i, parent), random.Random(i), stop), daemon=True)
        for i, c in enumerate(clients)
    ]
    try:
        for t in threads:
            t.start()
        for _ in range(KILLS):
            time.sleep(PHASE_S)
            old = masters.leader()
            masters.kill(old)
            masters.leader(timeout_s=10)
            masters.restart(old)
        time.sleep(PHASE_S)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        for c in clients:
            c.close()
    history = recorder.history()
    completed = [op for op in history if not op.pending]
    assert len(completed) > 200, f"only {len(completed)} operations completed"
    result = check(history, timeout_s=60)
    assert result.verdict == LINEARIZABLE, result.explanation
