"""Instructions per metadata mutation in a master, counted by valgrind: a figure that load does not move.

    PYTHONPATH=daemons python bench/meta_instructions.py [--ops mknod,rename,unlink,mkdir] [--n 200]

Runs a lone master in this process (RaftNode with its log in a temporary directory, MasterService)
and calls its `meta` handler from one thread, so each mutation is proposed, written, fdatasync'ed
and applied by this thread as through the rpc server (the rpc framing itself is left out). Under
valgrind's cachegrind it counts the user-space instructions of a run of n and of 2n rounds; their
difference divided by n is the cost of one round (one of each op), start-up and the kernel's
share (the fdatasync) excluded.

Why: on a shared 2-core machine CPU time per op swings by half with the neighbours' load, an
instruction count by a few per cent (the Raft loop's ticks). Compare two trees by running this
with PYTHONPATH pointing at each (a copy of the old `daemons/` works).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPS = ("mknod", "rename", "unlink", "mkdir")


def run_ops(ops: list[str], n: int) -> None:
    """n rounds of `ops` on a fresh lone master in this process."""
    from mooseng.master import raftnode
    from mooseng.master.metastore import MetaStore
    from mooseng.master.metrics import MasterMetrics
    from mooseng.master.registry import Registry
    from mooseng.master.service import MasterService

    class NoPeers:
        def send(self, msgs):
            pass

        def update_members(self, members):
            pass

    root = Path(tempfile.mkdtemp(prefix="mooseng-metainstr-"))
    node = raftnode.RaftNode("m1", "bench", {"m1": "127.0.0.1:1"}, "127.0.0.1:2", root, 0)
    service = MasterService(MetaStore(node), Registry("bench", 10.0, first_session=1), MasterMetrics(), "m1")
    seq = 0

    def call(op: str, **args):
        nonlocal seq
        seq += 1
        reply = service._meta({"op": op, "args": args, "client_id": 1, "seq": seq, "uid": 0, "gid": 0, "gids": []}, b"", "bench")
        if reply["errno"]:
            raise RuntimeError(f"{op}: {reply['message']}")
        return reply["result"]

    try:
        node.open()
        node.start(NoPeers())
        deadline = time.monotonic() + 10
        while not node.is_leader():
            if time.monotonic() > deadline:
                raise RuntimeError("the lone master did not become leader in 10 s")
            time.sleep(0.01)
        d = call("mkdir", parent=1, name=b"d", mode=0o40755)["ino"]
        for i in range(n):
            name = b"f%06d" % i
            for op in ops:
                if op == "mknod":
                    call("mknod", parent=d, name=name, mode=0o100644)
                elif op == "rename":
                    call("rename", parent=d, name=name, newparent=d, newname=name + b".r")
                elif op == "unlink":
                    call("unlink", parent=d, name=name + b".r")
                elif op == "mkdir":
                    call("mkdir", parent=d, name=b"d" + name, mode=0o40755)
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def count(ops: list[str], n: int) -> int:
    """User-space instructions of a child process running n rounds."""
    out = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, __file__, "--child", "--ops", ",".join(ops), "--n", str(n)],
        capture_output=True, text=True,
    )  # fmt: skip
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if out.returncode or not found:
        raise SystemExit(f"valgrind run failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, in round order; of {', '.join(OPS)}")
    ap.add_argument("--n", type=int, default=200, help="rounds of the shorter run (the longer has twice as many)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    ops = args.ops.split(",")
    if not ops or any(op not in OPS for op in ops) or ("rename" in ops) != ("mknod" in ops) or (
        "unlink" in ops and "rename" not in ops
    ):
        ap.error(f"--ops: {args.ops!r}: each of {', '.join(OPS)}; rename needs mknod, unlink needs rename")
    if args.n < 1:
        ap.error("--n must be at least 1")
    if args.child:
        run_ops(ops, args.n)
        return 0
    if shutil.which("valgrind") is None:
        ap.error("needs valgrind on PATH")
    short, long_ = count(ops, args.n), count(ops, 2 * args.n)
    per_round = (long_ - short) / args.n
    print(f"{per_round:,.0f} instructions per round of {', '.join(ops)}; {per_round / len(ops):,.0f} per op")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
